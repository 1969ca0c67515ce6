"""Writing one UTC hour of readings to Parquet. Imports pyarrow: worker process and CLI only.

Memory stays bounded whatever the hour's size. The hour is read from SQLite in one pass in Arrow
record batches (ADBC's SQLite driver builds the batches in C: Python's ``sqlite3`` spends about
1 us per row building tuples, too slow for 10 million rows). When the hour is larger than
``SORT_ROWS`` rows, each batch is split by node into buckets (ranges of node ids in name order)
spilled to compressed Arrow IPC files next to the dataset; each bucket is then sorted on its own
and streamed into the ``ParquetWriter``. Rows go out in row groups of exactly ``row_group_rows``
rows, whichever way they were read, so the same rows always give the same bytes.

Sort keys are integers (a node's rank among the node ids, a metric's rank among the names), so
the sort never touches strings; ``node_id`` and ``metric`` become strings only on the way out.
The hour's ``hour_stats`` (n, sum, min, max per node and metric) are computed on the same sorted
stream, so they cover exactly the rows of the file.
The file is written as a hidden temporary beside its final name, fsynced, renamed over it, and
the directory fsynced: readers see the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.rollup.catalog import HourStats, Rolled, Window, file_sha256
from gateway.rollup.hours import HOUR_MS, relpath

__all__ = ["SCHEMA", "SORT_ROWS", "WRITE_OPTIONS", "roll_hour", "write_options"]

#: The dataset's columns (docs/parquet.md, DESIGN.md "Parquet").
SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("node_id", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("boot", pa.int32()),
        ("seq", pa.int64()),
        ("received", pa.timestamp("ms", tz="UTC")),
        ("flags", pa.int32()),
    ]
)

#: Dictionary pages for the two string columns; delta encoding for the sorted integer columns
#: (it does not apply to dictionary columns, hence the split); byte-stream-split lets zstd
#: see the shared exponent bytes of slowly moving sensor values.
WRITE_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "use_dictionary": ["node_id", "metric"],
    "column_encoding": {
        "ts": "DELTA_BINARY_PACKED",
        "seq": "DELTA_BINARY_PACKED",
        "received": "DELTA_BINARY_PACKED",
        "boot": "DELTA_BINARY_PACKED",
        "flags": "DELTA_BINARY_PACKED",
        "value": "BYTE_STREAM_SPLIT",
    },
    "write_statistics": True,
    "store_schema": True,
}

#: Rows sorted in memory at once (about 40 bytes each while sorting).
SORT_ROWS = 400_000

#: Rows per Arrow batch read from SQLite.
BATCH_ROWS = 65_536

# The working columns: integer ranks instead of strings, narrow types.
_WORK = pa.schema(
    [
        ("node", pa.int32()),
        ("metric", pa.int32()),
        ("ts", pa.int64()),
        ("boot", pa.int32()),
        ("seq", pa.int64()),
        ("received", pa.int64()),
        ("flags", pa.int32()),
        ("value", pa.float64()),
    ]
)
_SORT = [(k, "ascending") for k in ("node", "metric", "ts", "boot", "seq")]

_COLUMNS = "SELECT m.node_ref, r.metric_ref, m.ts, m.boot, m.seq, m.received, m.flags, r.value"
_WINDOW = "m.ts BETWEEN m.received - ? AND m.received + ? AND m.id > ?"
# Two ways to the hour's rows. Through the (node_ref, ts) index: one node after the other, so
# every message and its readings are a page read of their own (7 million for 1,000 nodes at
# 1 Hz, mostly outside SQLite's cache). Through a range of ids: messages are stored in commit
# order, so an hour that arrived on time is one run of ids, read sequentially in a few seconds.
_BY_INDEX = f"""{_COLUMNS}
FROM messages m JOIN readings r ON r.message_id = m.id
WHERE m.node_ref IN (SELECT node_ref FROM nodes) AND m.ts >= ? AND m.ts < ? AND {_WINDOW}
"""
_BY_IDS = f"""{_COLUMNS}
FROM messages m JOIN readings r ON r.message_id = m.id
WHERE m.id BETWEEN ? AND ? AND r.message_id BETWEEN ? AND ? AND m.ts >= ? AND m.ts < ?
  AND {_WINDOW}
"""
#: Read by ids while the hour's id range holds at most this many ids per message of the hour
#: (late readings widen it); otherwise through the index.
ID_SPAN_RATIO = 4


@dataclass(frozen=True, slots=True)
class _Extent:
    """The hour's messages in the store: how many, and their lowest and highest id."""

    messages: int
    low: int
    high: int

    #: The (node_ref, ts) index covers this (ids are its rowids): no table page is read.
    SQL = (
        "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM messages "
        "WHERE node_ref IN (SELECT node_ref FROM nodes) AND ts >= {} AND ts < {}"
    )

    @property
    def dense(self) -> bool:
        return self.messages > 0 and self.high - self.low + 1 <= ID_SPAN_RATIO * self.messages


def write_options() -> dict[str, object]:
    return dict(WRITE_OPTIONS)


@dataclass(slots=True)
class _Names:
    """Node and metric names in sort order, ref -> rank lookups and rank -> ref arrays."""

    nodes: pa.Array
    metrics: pa.Array
    node_rank: np.ndarray
    metric_rank: np.ndarray
    node_ref: np.ndarray
    metric_ref: np.ndarray

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> _Names:
        def ranks(rows: list[tuple[int, str]]) -> tuple[pa.Array, np.ndarray, np.ndarray]:
            rows = sorted(rows, key=lambda r: r[1])
            lookup = np.full(max((r[0] for r in rows), default=0) + 1, -1, dtype=np.int32)
            for rank, (ref, _) in enumerate(rows):
                lookup[ref] = rank
            refs = np.array([r[0] for r in rows], dtype=np.int64)
            return pa.array([r[1] for r in rows], pa.string()), lookup, refs

        nodes, node_rank, node_ref = ranks(
            conn.execute("SELECT node_ref, node_id FROM nodes").fetchall()
        )
        metric_rows = conn.execute("SELECT metric_ref, name FROM metrics").fetchall()
        metrics, metric_rank, metric_ref = ranks(metric_rows)
        return cls(nodes, metrics, node_rank, metric_rank, node_ref, metric_ref)


class _Stats:
    """n, sum, min and max per (node, metric) of the sorted stream (``hour_stats``).

    Tables arrive sorted by node and metric, and a (node, metric) pair never spans two of
    them (buckets hold whole nodes), so each table's runs are final.
    """

    def __init__(self, names: _Names) -> None:
        self.names = names
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, t: pa.Table) -> None:
        node = t["node"].to_numpy()
        metric = t["metric"].to_numpy()
        value = t["value"].to_numpy()
        change = (node[1:] != node[:-1]) | (metric[1:] != metric[:-1])
        starts = np.concatenate(([0], np.flatnonzero(change) + 1))
        n = np.diff(np.append(starts, len(value)))
        self.parts.append(
            (
                self.names.node_ref[node[starts]],
                self.names.metric_ref[metric[starts]],
                n,
                np.add.reduceat(value, starts),
                np.minimum.reduceat(value, starts),
                np.maximum.reduceat(value, starts),
            )
        )

    def result(self) -> HourStats:
        if not self.parts:
            return HourStats()
        cols = [np.concatenate(c) for c in zip(*self.parts, strict=True)]
        return HourStats(*(tuple(c.tolist()) for c in cols))


class _RowGroups:
    """Cuts the sorted stream into row groups of exactly ``size`` rows and writes them."""

    def __init__(self, writer: pq.ParquetWriter, size: int, names: _Names) -> None:
        self.writer = writer
        self.size = size
        self.names = names
        self.parts: list[pa.Table] = []
        self.held = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.parts.append(table)
        self.held += table.num_rows
        while self.held >= self.size:
            self._flush(self.size)

    def close(self) -> None:
        if self.held:
            self._flush(self.held)

    def _flush(self, n: int) -> None:
        whole = pa.concat_tables(self.parts)
        group, rest = whole.slice(0, n), whole.slice(n)
        self.parts = [rest] if rest.num_rows else []
        self.held = rest.num_rows
        # _output makes the one contiguous copy (the bytes written depend on the chunking).
        self.writer.write_table(self._output(group), row_group_size=n)
        self.rows += n

    def _output(self, t: pa.Table) -> pa.Table:
        utc = pa.timestamp("ms", tz="UTC")
        return pa.Table.from_arrays(
            [
                t["ts"].cast(utc),
                self.names.nodes.take(t["node"]),
                self.names.metrics.take(t["metric"]),
                t["value"],
                t["boot"],
                t["seq"],
                t["received"].cast(utc),
                t["flags"],
            ],
            schema=SCHEMA,
        ).combine_chunks()


def _to_work(batch: pa.RecordBatch, names: _Names) -> pa.Table:
    """A batch from SQLite (refs, int64 everywhere) as working columns (ranks, narrow types)."""
    node = names.node_rank[batch.column(0).to_numpy()]
    metric = names.metric_rank[batch.column(1).to_numpy()]
    return pa.Table.from_arrays(
        [
            pa.array(node),
            pa.array(metric),
            batch.column(2),
            batch.column(3).cast(pa.int32()),
            batch.column(4),
            batch.column(5),
            batch.column(6).cast(pa.int32()),
            batch.column(7).cast(pa.float64()),
        ],
        schema=_WORK,
    )


def _from_file(path: Path, names: _Names) -> Iterator[pa.Table]:
    """An hour's existing file as working columns (for merging late data into it).

    Streamed in batches of ``BATCH_ROWS`` rows, never a whole row group or file at once; the
    string columns come as dictionaries, so each batch maps a few names, not every row's.
    """
    pf = pq.ParquetFile(path, read_dictionary=["node_id", "metric"])
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            yield pa.Table.from_arrays(
                [
                    _ranks(batch.column(1), names.nodes, path),
                    _ranks(batch.column(2), names.metrics, path),
                    batch.column(0).cast(pa.int64()),
                    batch.column(4),
                    batch.column(5),
                    batch.column(6).cast(pa.int64()),
                    batch.column(7),
                    batch.column(3),
                ],
                schema=_WORK,
            )
    finally:
        pf.close()


def _ranks(column: pa.Array, ordered: pa.Array, path: Path) -> pa.Array:
    """A dictionary-encoded name column as ranks in ``ordered`` (the store's names)."""
    assert isinstance(column, pa.DictionaryArray)
    rank = pc.index_in(column.dictionary, value_set=ordered)
    if rank.null_count:
        raise ValueError(f"{path} names a node or metric the store does not know")
    return rank.cast(pa.int32()).take(column.indices)


def _read_sqlite(
    db: Path, hour: int, window: Window, after_id: int
) -> tuple[int, _Extent, Iterator[pa.RecordBatch]]:
    """The store's highest message id, the hour's extent and its rows, in one read snapshot."""
    # ADBC's low-level API: its DB-API module imports pandas and pyarrow.dataset, 44 MB of
    # the worker's RSS for nothing it uses.
    import adbc_driver_manager as adbc
    import adbc_driver_sqlite

    database = adbc_driver_sqlite.connect(f"file:{db}?mode=ro")
    conn = adbc.AdbcConnection(database)
    statements: list[adbc.AdbcStatement] = []

    def query(sql: str, **options: str) -> pa.RecordBatchReader:
        stmt = adbc.AdbcStatement(conn)
        statements.append(stmt)
        if options:
            stmt.set_options(**options)
        stmt.set_sql_query(sql)
        handle, _ = stmt.execute_query()
        return pa.RecordBatchReader.from_stream(handle)

    def close() -> None:
        for stmt in statements:
            with contextlib.suppress(Exception):
                stmt.close()
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()
        database.close()

    try:
        # One read transaction: max(id) and the rows come from the same snapshot, so the
        # catalog's max_id says exactly what the file holds.
        conn.set_autocommit(False)
        top = query("SELECT coalesce(max(id), 0) FROM messages").read_all()
        max_id = int(top.column(0)[0].as_py())
        # In the same snapshot: a message committed meanwhile must not fall outside the range.
        found = query(_Extent.SQL.format(int(hour), int(hour) + HOUR_MS)).read_all()
        extent = _Extent(*(int(found.column(i)[0].as_py()) for i in range(3)))
        # Integers only, formatted by int(): nothing to quote. (Binding parameters through
        # the low-level API needs an Arrow batch per statement.)
        args: tuple[int, ...] = (hour, hour + HOUR_MS, window.past_ms, window.future_ms, after_id)
        template = _BY_INDEX
        if extent.dense:
            template = _BY_IDS
            args = (extent.low, extent.high, extent.low, extent.high, *args)
        sql = template.replace("?", "{}").format(*(int(a) for a in args))
        reader = query(sql, **{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
    except BaseException:
        close()
        raise

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        finally:
            with contextlib.suppress(Exception):
                reader.close()
            close()

    return max_id, extent, batches()


def _estimate_rows(conn: sqlite3.Connection, extent: _Extent) -> int:
    per = conn.execute(
        "SELECT (SELECT value FROM counters WHERE name = 'rows'), "
        "(SELECT value FROM counters WHERE name = 'stored')"
    ).fetchone()
    ratio = (per[0] / per[1]) if per[0] and per[1] else 4.0
    return int(extent.messages * ratio * 1.1) + 1


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create the partition directories, fsyncing each parent that gained an entry."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync(d.parent)


def roll_hour(
    db: Path,
    root: Path,
    hour: int,
    *,
    window: Window,
    row_group_rows: int,
    merge_after: int | None = None,
) -> Rolled:
    """Write the hour's file atomically and return what the catalog records.

    ``merge_after``: the hour's rows up to this id are no longer (all) in SQLite; read them
    from the existing file and add the messages newer than it. A missing or unreadable file
    falls back to what SQLite still holds.
    """
    rel = relpath(hour)
    final = root / rel
    old: Path | None = None
    if merge_after is not None:
        try:
            pq.ParquetFile(final)
            old = final
        except (OSError, pa.ArrowException):
            merge_after = None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = _Names.load(conn)
        max_id, extent, batches = _read_sqlite(db, hour, window, merge_after or 0)
        estimate = _estimate_rows(conn, extent)
    finally:
        conn.close()
    sources: list[Iterator[pa.Table]] = [(_to_work(b, names) for b in batches)]
    if old is not None:
        sources.insert(0, _from_file(old, names))
        estimate += pq.ParquetFile(old).metadata.num_rows

    _make_dirs(final.parent)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with tempfile.TemporaryDirectory(prefix=".spill-", dir=root) as spill:
            writer = pq.ParquetWriter(tmp, SCHEMA, **write_options())
            groups = _RowGroups(writer, row_group_rows, names)
            stats = _Stats(names)
            try:
                buckets = max(1, -(-estimate // SORT_ROWS))
                for table in _sorted_buckets(sources, buckets, len(names.nodes), Path(spill)):
                    stats.add(table)
                    groups.add(table)
                groups.close()
            finally:
                writer.close()
        if groups.rows == 0:
            tmp.unlink()
            return Rolled(hour, rel, 0, 0, "", max_id)
        _fsync(tmp)
        digest = file_sha256(tmp)
        size = tmp.stat().st_size
        tmp.replace(final)
        _fsync(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Rolled(hour, rel, groups.rows, size, digest, max_id, stats.result())


def _sorted_buckets(
    sources: list[Iterator[pa.Table]], buckets: int, nodes: int, spill: Path
) -> Iterator[pa.Table]:
    """All rows of ``sources`` in sort order, holding one bucket of nodes at a time."""
    if buckets == 1:
        tables = [t for src in sources for t in src]
        if tables:
            whole = pa.concat_tables(tables)
            del tables
            done = whole.sort_by(_SORT)
            del whole  # before the consumer works on the sorted copy
            yield done
        return
    # Bucket k holds the nodes with rank in [k*width, (k+1)*width).
    width = max(1, -(-nodes // buckets))
    count = -(-nodes // width)
    options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", 1))
    files = [spill / f"bucket-{k}.arrow" for k in range(count)]
    writers = [pa.ipc.new_file(f, _WORK, options=options) for f in files]
    try:
        for src in sources:
            for t in src:
                key = pc.divide(t["node"], pa.scalar(width, pa.int32())).to_numpy()
                order = np.argsort(key, kind="stable")
                edges = np.searchsorted(key[order], np.arange(count + 1))
                sorted_t = t.take(pa.array(order))
                for k in range(count):
                    a, b = int(edges[k]), int(edges[k + 1])
                    if b > a:
                        writers[k].write_table(sorted_t.slice(a, b - a))
    finally:
        for w in writers:
            w.close()
    for f in files:
        with pa.OSFile(str(f)) as source:
            table = pa.ipc.open_file(source).read_all()
        f.unlink()
        if table.num_rows:
            done = table.sort_by(_SORT)
            del table  # before the consumer works on the sorted copy
            yield done
            del done


def now_ms() -> int:
    return time.time_ns() // 1_000_000

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

from gateway.rollup.catalog import Rolled, Window, file_sha256
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

_SELECT = """
SELECT m.node_ref, r.metric_ref, m.ts, m.boot, m.seq, m.received, m.flags, r.value
FROM messages m JOIN readings r ON r.message_id = m.id
WHERE m.node_ref IN (SELECT node_ref FROM nodes) AND m.ts >= ? AND m.ts < ?
  AND m.ts BETWEEN m.received - ? AND m.received + ? AND m.id > ?
"""


def write_options() -> dict[str, object]:
    return dict(WRITE_OPTIONS)


@dataclass(slots=True)
class _Names:
    """Node and metric names in sort order, and ref -> rank lookups."""

    nodes: pa.Array
    metrics: pa.Array
    node_rank: np.ndarray
    metric_rank: np.ndarray

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> _Names:
        def ranks(rows: list[tuple[int, str]]) -> tuple[pa.Array, np.ndarray]:
            rows = sorted(rows, key=lambda r: r[1])
            lookup = np.full(max((r[0] for r in rows), default=0) + 1, -1, dtype=np.int32)
            for rank, (ref, _) in enumerate(rows):
                lookup[ref] = rank
            return pa.array([r[1] for r in rows], pa.string()), lookup

        nodes, node_rank = ranks(conn.execute("SELECT node_ref, node_id FROM nodes").fetchall())
        metric_rows = conn.execute("SELECT metric_ref, name FROM metrics").fetchall()
        metrics, metric_rank = ranks(metric_rows)
        return cls(nodes, metrics, node_rank, metric_rank)


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
        self.writer.write_table(self._output(group.combine_chunks()), row_group_size=n)
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
    """An hour's existing file as working columns (for merging late data into it)."""
    pf = pq.ParquetFile(path)
    node_names, metric_names = names.nodes, names.metrics
    for i in range(pf.num_row_groups):
        t = pf.read_row_group(i)
        node = pc.index_in(t["node_id"], value_set=node_names)
        metric = pc.index_in(t["metric"], value_set=metric_names)
        if node.null_count or metric.null_count:
            raise ValueError(f"{path} names a node or metric the store does not know")
        yield pa.Table.from_arrays(
            [
                node.cast(pa.int32()),
                metric.cast(pa.int32()),
                t["ts"].cast(pa.int64()),
                t["boot"],
                t["seq"],
                t["received"].cast(pa.int64()),
                t["flags"],
                t["value"],
            ],
            schema=_WORK,
        )


def _read_sqlite(
    db: Path, hour: int, window: Window, after_id: int
) -> tuple[int, Iterator[pa.RecordBatch]]:
    """The store's highest message id and the hour's rows, in one read snapshot."""
    import adbc_driver_sqlite.dbapi as adbc

    conn = adbc.connect(f"file:{db}?mode=ro")
    cur = conn.cursor()
    # One read transaction (ADBC connections do not autocommit): max(id) and the rows come
    # from the same snapshot, so the catalog's max_id says exactly what the file holds.
    cur.execute("SELECT coalesce(max(id), 0) FROM messages")
    row = cur.fetchone()
    max_id = int(row[0]) if row else 0
    cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "65536"})
    cur.execute(_SELECT, (hour, hour + HOUR_MS, window.past_ms, window.future_ms, after_id))
    reader = cur.fetch_record_batch()

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        finally:
            with contextlib.suppress(Exception):
                reader.close()
            cur.close()
            conn.rollback()
            conn.close()

    return max_id, batches()


def _estimate_rows(conn: sqlite3.Connection, hour: int) -> int:
    msgs = int(
        conn.execute(
            "SELECT count(*) FROM messages WHERE node_ref IN (SELECT node_ref FROM nodes) "
            "AND ts >= ? AND ts < ?",
            (hour, hour + HOUR_MS),
        ).fetchone()[0]
    )
    per = conn.execute(
        "SELECT (SELECT value FROM counters WHERE name = 'rows'), "
        "(SELECT value FROM counters WHERE name = 'stored')"
    ).fetchone()
    ratio = (per[0] / per[1]) if per[0] and per[1] else 4.0
    return int(msgs * ratio * 1.1) + 1


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
        estimate = _estimate_rows(conn, hour)
    finally:
        conn.close()
    max_id, batches = _read_sqlite(db, hour, window, merge_after or 0)
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
            try:
                buckets = max(1, -(-estimate // SORT_ROWS))
                for table in _sorted_buckets(sources, buckets, len(names.nodes), Path(spill)):
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
    return Rolled(hour, rel, groups.rows, size, digest, max_id)


def _sorted_buckets(
    sources: list[Iterator[pa.Table]], buckets: int, nodes: int, spill: Path
) -> Iterator[pa.Table]:
    """All rows of ``sources`` in sort order, holding one bucket of nodes at a time."""
    if buckets == 1:
        tables = [t for src in sources for t in src]
        if tables:
            whole = pa.concat_tables(tables)
            del tables
            yield whole.sort_by(_SORT)
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
        if table.num_rows:
            yield table.sort_by(_SORT)
        del table
        f.unlink()


def now_ms() -> int:
    return time.time_ns() // 1_000_000

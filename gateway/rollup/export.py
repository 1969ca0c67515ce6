"""``roost export``: readings of a time range from Parquet (cold) and SQLite (hot) together.

A row comes from the hour's file when the catalog holds it (``max_id``), otherwise from SQLite,
so nothing is exported twice or missed while rollup and retention run. Imports pyarrow: CLI
only.

Streamed hour by hour, so memory stays bounded whatever the range: an hour's file is read in
batches (its rows are in node_id, metric, ts order already) and its hot rows come from SQLite in
the same order, ``fetchmany`` at a time. Rows therefore go out ordered by hour, then node_id,
metric, ts; an hour with late readings not yet rolled has them after the file's rows. The output
is written beside its name and renamed into place when complete.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gateway.rollup.catalog import entries
from gateway.rollup.hours import HOUR_MS, hour_of
from gateway.rollup.parquet import SCHEMA, write_options

__all__ = ["BATCH_ROWS", "FORMATS", "export", "read_range", "stream_range"]

#: Rows per batch read and written.
BATCH_ROWS = 65_536
FORMATS = ("parquet", "csv")

_HOT = (
    "SELECT m.ts, n.node_id, k.name, r.value, m.boot, m.seq, m.received, m.flags "
    "FROM messages m JOIN readings r ON r.message_id = m.id "
    "JOIN nodes n USING (node_ref) JOIN metrics k USING (metric_ref) "
    "WHERE m.node_ref IN (SELECT node_ref FROM nodes) AND m.ts >= ? AND m.ts < ? AND m.id > ?"
)


def stream_range(
    conn: sqlite3.Connection,
    root: Path,
    start_ms: int,
    end_ms: int,
    nodes: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
) -> Iterator[pa.RecordBatch]:
    """Batches of the rows with ``start_ms <= ts < end_ms`` (order: the module docstring).

    Holds one read transaction on ``conn`` until exhausted or closed: the catalog and the hot
    rows are of the same moment.
    """
    conn.execute("BEGIN")
    try:
        rolled = {
            e.hour: e
            for e in entries(conn)
            if e.hour + HOUR_MS > start_ms and e.hour < end_ms and (root / e.path).is_file()
        }
        for hour in range(hour_of(start_ms), end_ms, HOUR_MS):
            lo, hi = max(start_ms, hour), min(end_ms, hour + HOUR_MS)
            e = rolled.get(hour)
            if e is not None:
                yield from _cold(root / e.path, lo, hi, nodes, metrics)
            yield from _hot(conn, lo, hi, nodes, metrics, e.max_id if e else 0)
    finally:
        conn.execute("COMMIT")


def _cold(
    path: Path, start: int, end: int, nodes: tuple[str, ...], metrics: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    utc = pa.timestamp("ms", tz="UTC")
    keep = (pc.field("ts") >= pa.scalar(start, utc)) & (pc.field("ts") < pa.scalar(end, utc))
    if nodes:
        keep &= pc.field("node_id").isin(list(nodes))
    if metrics:
        keep &= pc.field("metric").isin(list(metrics))
    pf = pq.ParquetFile(path)
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            t = pa.Table.from_batches([batch.cast(SCHEMA)]).filter(keep)
            yield from t.to_batches()
    finally:
        pf.close()


def _hot(
    conn: sqlite3.Connection,
    start: int,
    end: int,
    nodes: tuple[str, ...],
    metrics: tuple[str, ...],
    after_id: int,
) -> Iterator[pa.RecordBatch]:
    sql = _HOT
    args: list[object] = [start, end, after_id]
    if nodes:
        sql += f" AND n.node_id IN ({','.join('?' * len(nodes))})"
        args += nodes
    if metrics:
        sql += f" AND k.name IN ({','.join('?' * len(metrics))})"
        args += metrics
    cur = conn.execute(sql + " ORDER BY n.node_id, k.name, m.ts, m.boot, m.seq", args)
    try:
        while rows := cur.fetchmany(BATCH_ROWS):
            cols = list(zip(*rows, strict=True))
            yield pa.RecordBatch.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA, strict=True)],
                schema=SCHEMA,
            )
    finally:
        cur.close()


def read_range(
    conn: sqlite3.Connection,
    root: Path,
    start_ms: int,
    end_ms: int,
    nodes: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
) -> pa.Table:
    """The same rows in memory, sorted by node_id, metric, ts, boot, seq (small ranges only)."""
    table = pa.Table.from_batches(
        list(stream_range(conn, root, start_ms, end_ms, nodes, metrics)), schema=SCHEMA
    )
    keys = [(k, "ascending") for k in ("node_id", "metric", "ts", "boot", "seq")]
    return table.take(pc.sort_indices(table, sort_keys=keys))


class _Writer(Protocol):
    def write_table(self, table: pa.Table) -> None: ...

    def close(self) -> None: ...


def export(
    conn: sqlite3.Connection,
    root: Path,
    start_ms: int,
    end_ms: int,
    out: Path,
    fmt: str,
    nodes: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
) -> int:
    """Write the range to ``out`` as Parquet (the dataset's encoding) or CSV (ISO 8601 UTC
    times), streamed; returns the rows written. ``out`` appears only when complete."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        writer: _Writer = (
            pq.ParquetWriter(tmp, SCHEMA, **write_options())
            if fmt == "parquet"
            else pacsv.CSVWriter(tmp, SCHEMA)
        )
        try:
            held: list[pa.RecordBatch] = []
            n = 0
            for batch in stream_range(conn, root, start_ms, end_ms, nodes, metrics):
                held.append(batch)
                n += batch.num_rows
                if n >= BATCH_ROWS:  # whole batches: no row group of a few rows per hour
                    writer.write_table(pa.Table.from_batches(held, schema=SCHEMA))
                    rows, held, n = rows + n, [], 0
            if n or rows == 0:
                writer.write_table(pa.Table.from_batches(held, schema=SCHEMA))
                rows += n
        finally:
            writer.close()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows

"""``roost export``: readings of a time range from Parquet (cold) and SQLite (hot) together.

A row comes from the hour's file when the catalog holds it (``max_id``), otherwise from SQLite,
so nothing is exported twice or missed while rollup and retention run. Imports pyarrow: CLI
only. The result is held in memory: export ranges that fit (split long ranges by day).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gateway.rollup.catalog import entries
from gateway.rollup.hours import HOUR_MS
from gateway.rollup.parquet import SCHEMA, write_options

__all__ = ["export", "read_range"]


def read_range(
    conn: sqlite3.Connection,
    root: Path,
    start_ms: int,
    end_ms: int,
    nodes: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
) -> pa.Table:
    """Rows with ``start_ms <= ts < end_ms``, sorted by node_id, metric, ts, boot, seq."""
    # One read transaction: the catalog and the hot rows are of the same moment.
    conn.execute("BEGIN")
    try:
        live = [
            e
            for e in entries(conn)
            if e.hour + HOUR_MS > start_ms and e.hour < end_ms and (root / e.path).is_file()
        ]
        parts = [_cold(root / e.path, start_ms, end_ms, nodes, metrics) for e in live]
        parts.append(_hot(conn, start_ms, end_ms, nodes, metrics, {e.hour: e.max_id for e in live}))
    finally:
        conn.execute("COMMIT")
    table = pa.concat_tables(parts)
    keys = [(k, "ascending") for k in ("node_id", "metric", "ts", "boot", "seq")]
    return table.take(pc.sort_indices(table, sort_keys=keys))


def _cold(
    path: Path, start: int, end: int, nodes: tuple[str, ...], metrics: tuple[str, ...]
) -> pa.Table:
    utc = pa.timestamp("ms", tz="UTC")
    flt = (pc.field("ts") >= pa.scalar(start, utc)) & (pc.field("ts") < pa.scalar(end, utc))
    if nodes:
        flt &= pc.field("node_id").isin(list(nodes))
    if metrics:
        flt &= pc.field("metric").isin(list(metrics))
    return pq.read_table(path, filters=flt, schema=SCHEMA)


def _hot(
    conn: sqlite3.Connection,
    start: int,
    end: int,
    nodes: tuple[str, ...],
    metrics: tuple[str, ...],
    rolled: dict[int, int],
) -> pa.Table:
    sql = (
        "SELECT m.ts, n.node_id, k.name, r.value, m.boot, m.seq, m.received, m.flags, m.id "
        "FROM messages m JOIN readings r ON r.message_id = m.id "
        "JOIN nodes n USING (node_ref) JOIN metrics k USING (metric_ref) "
        "WHERE m.node_ref IN (SELECT node_ref FROM nodes) AND m.ts >= ? AND m.ts < ?"
    )
    args: list[object] = [start, end]
    if nodes:
        sql += f" AND n.node_id IN ({','.join('?' * len(nodes))})"
        args += nodes
    if metrics:
        sql += f" AND k.name IN ({','.join('?' * len(metrics))})"
        args += metrics
    cols: list[list[object]] = [[] for _ in range(8)]
    for row in conn.execute(sql, args):
        ts, mid = row[0], row[8]
        h = ts - ts % HOUR_MS
        if mid <= rolled.get(h, 0):
            continue  # in the hour's file
        for i in range(8):
            cols[i].append(row[i])
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA, strict=True)], schema=SCHEMA
    )


def export(table: pa.Table, out: Path, fmt: str) -> None:
    """Write ``table`` as Parquet (the dataset's encoding) or CSV (ISO 8601 UTC times)."""
    if fmt == "parquet":
        pq.write_table(table, out, **write_options())
    else:
        pacsv.write_csv(table, out)

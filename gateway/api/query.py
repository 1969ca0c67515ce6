"""Series (bucketed) and raw readings: the read model behind ``/api/series``, ``/api/readings``,
``/api/export`` and the WebSocket backfill.

A ``Source`` answers both kinds of question for a time range. ``SqliteSource`` reads only the hot
store (every row SQLite still holds); ``gateway.api.tiered.TieredSource`` adds the rolled hours'
aggregates (``hour_stats``) and the Parquet files of pruned hours, and is what the API serves.
Both order raw readings by the reading's identity, ``(ts, node_ref, boot, seq, metric_ref)``,
which a Parquet row carries as well as a SQLite row (a pruned message has no ``messages.id``
any more), so pages from the two tiers merge and a cursor stays valid across the boundary.

Everything here is synchronous and runs on a ``ReadPool`` thread.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "NICE_BUCKETS_MS",
    "Key",
    "Page",
    "Reading",
    "ReadingsQuery",
    "Refs",
    "Series",
    "SeriesQuery",
    "Source",
    "SqliteSource",
    "auto_bucket",
    "decode_cursor",
    "encode_cursor",
    "hot_readings_sql",
    "in_list",
    "metric_filter",
    "resolve_refs",
]

S, M, H, D = 1000, 60_000, 3_600_000, 86_400_000
NICE_BUCKETS_MS = (
    1 * S, 2 * S, 5 * S, 10 * S, 15 * S, 30 * S,
    1 * M, 2 * M, 5 * M, 10 * M, 15 * M, 30 * M,
    1 * H, 2 * H, 3 * H, 6 * H, 12 * H, 1 * D, 2 * D, 7 * D, 30 * D,
)  # fmt: skip

#: A reading's place in the order: (ts, node_ref, boot, seq, metric_ref).
Key = tuple[int, int, int, int, int]


def auto_bucket(start: int, end: int, points: int) -> int:
    """The smallest nice bucket that gives at most ``points`` buckets over ``[start, end)``."""
    span = max(end - start, 1)
    for b in NICE_BUCKETS_MS:
        if span / b <= points:
            return b
    return -(-span // points)


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """Buckets of ``bucket_ms`` over ``[start, end)``; empty ``nodes``/``metrics`` mean all."""

    nodes: tuple[str, ...]
    metrics: tuple[str, ...]
    start: int
    end: int
    bucket_ms: int


@dataclass(slots=True)
class Series:
    """One node's metric as columns: bucket start, avg, min, max, count."""

    node: str
    metric: str
    t: list[int] = field(default_factory=list)
    avg: list[float] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReadingsQuery:
    """Raw readings in ``[start, end)`` after ``after`` (a decoded cursor), at most ``limit``."""

    nodes: tuple[str, ...]
    metrics: tuple[str, ...]
    start: int
    end: int
    limit: int
    after: Key | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    #: The message's commit order; None when the row comes from Parquet (its hot row is pruned).
    id: int | None
    node: str
    metric: str
    ts: int
    received: int
    boot: int
    seq: int
    flags: int
    value: float


@dataclass(frozen=True, slots=True)
class Page:
    readings: list[Reading]
    #: Where the next page starts, or None when this was the last.
    next_cursor: str | None


def encode_cursor(key: Key) -> str:
    return ".".join(str(k) for k in key)


def decode_cursor(text: str) -> Key | None:
    """The position a cursor names, or None when it is not one of ours."""
    parts = text.split(".")
    if len(parts) != 5:
        return None
    try:
        ts, node, boot, seq, ref = (int(p) for p in parts)
    except ValueError:
        return None
    if abs(ts) >= 2**62 or not all(0 <= v < 2**62 for v in (node, boot, seq, ref)):
        return None
    return ts, node, boot, seq, ref


class Source(Protocol):
    """Where readings come from (``SqliteSource``: hot only; ``TieredSource``: hot and cold)."""

    def series(self, conn: sqlite3.Connection, q: SeriesQuery) -> list[Series]: ...

    def readings(self, conn: sqlite3.Connection, q: ReadingsQuery) -> Page: ...


@dataclass(frozen=True, slots=True)
class Refs:
    """The asked nodes and metrics by reference; ``all_metrics`` when no metric was named."""

    nodes: dict[int, str]
    metrics: dict[int, str]
    all_metrics: bool


def resolve_refs(conn: sqlite3.Connection, q: SeriesQuery | ReadingsQuery) -> Refs | None:
    """Resolve names to references; None when a named node or metric has no data at all."""
    nodes = dict(conn.execute("SELECT node_ref, node_id FROM nodes"))
    metrics = dict(conn.execute("SELECT metric_ref, name FROM metrics"))
    if q.nodes:
        by_name = {v: k for k, v in nodes.items()}
        nodes = {by_name[n]: n for n in q.nodes if n in by_name}
    if q.metrics:
        by_name = {v: k for k, v in metrics.items()}
        metrics = {by_name[m]: m for m in q.metrics if m in by_name}
    if not nodes or not metrics:
        return None
    return Refs(nodes, metrics, not q.metrics)


def in_list(refs: dict[int, str]) -> str:
    # References are integers from our own tables, so inlining them is safe, and it lets SQLite
    # use the (node_ref, ts) index once per node.
    return ",".join(str(int(r)) for r in sorted(refs))


def metric_filter(refs: Refs) -> str:
    return "" if refs.all_metrics else f"AND r.metric_ref IN ({in_list(refs.metrics)})"


def hot_readings_sql(refs: Refs, q: ReadingsQuery, extra: str = "") -> tuple[str, dict[str, int]]:
    """The keyset page query over SQLite's rows; ``extra`` adds a condition on ``m``."""
    args: dict[str, int] = {"start": q.start, "end": q.end, "limit": q.limit + 1}
    after = ""
    if q.after is not None:
        # The plain ``m.ts >=`` lets the (node_ref, ts) index skip to the cursor.
        after = (
            "AND m.ts >= :ats AND (m.ts, m.node_ref, m.boot, m.seq, r.metric_ref) "
            "> (:ats, :anode, :aboot, :aseq, :aref)"
        )
        args.update(zip(("ats", "anode", "aboot", "aseq", "aref"), q.after, strict=True))
    sql = f"""
        SELECT m.id, m.node_ref, r.metric_ref, m.ts, m.received, m.boot, m.seq, m.flags,
               r.value
        FROM messages m CROSS JOIN readings r ON r.message_id = m.id
        WHERE m.node_ref IN ({in_list(refs.nodes)}) AND m.ts >= :start AND m.ts < :end
          {metric_filter(refs)} {after} {extra}
        ORDER BY m.ts, m.node_ref, m.boot, m.seq, r.metric_ref
        LIMIT :limit
    """
    return sql, args


class SqliteSource:
    """The hot store alone: every row SQLite holds, nothing from Parquet.

    The reference that ``TieredSource`` must agree with while no hour is pruned. Queries walk
    ``messages (node_ref, ts)`` then the readings' primary key.
    """

    def series(self, conn: sqlite3.Connection, q: SeriesQuery) -> list[Series]:
        refs = resolve_refs(conn, q)
        if refs is None:
            return []
        rows = conn.execute(
            f"""
            SELECT m.node_ref, r.metric_ref, m.ts / :b AS k,
                   avg(r.value), min(r.value), max(r.value), count(*)
            FROM messages m CROSS JOIN readings r ON r.message_id = m.id
            WHERE m.node_ref IN ({in_list(refs.nodes)}) AND m.ts >= :start AND m.ts < :end
              {metric_filter(refs)}
            GROUP BY m.node_ref, r.metric_ref, k
            ORDER BY m.node_ref, r.metric_ref, k
            """,
            {"b": q.bucket_ms, "start": q.start, "end": q.end},
        )
        out: list[Series] = []
        current: Series | None = None
        key: tuple[int, int] | None = None
        for node_ref, metric_ref, k, avg, lo, hi, n in rows:
            if (node_ref, metric_ref) != key:
                key = (node_ref, metric_ref)
                current = Series(refs.nodes[node_ref], refs.metrics.get(metric_ref, "?"))
                out.append(current)
            assert current is not None
            current.t.append(k * q.bucket_ms)
            current.avg.append(avg)
            current.min.append(lo)
            current.max.append(hi)
            current.count.append(n)
        return out

    def readings(self, conn: sqlite3.Connection, q: ReadingsQuery) -> Page:
        refs = resolve_refs(conn, q)
        if refs is None:
            return Page([], None)
        sql, args = hot_readings_sql(refs, q)
        rows = conn.execute(sql, args).fetchall()
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        readings = [
            Reading(mid, refs.nodes[n], refs.metrics.get(k, "?"), ts, rcv, boot, seq, flags, v)
            for mid, n, k, ts, rcv, boot, seq, flags, v in rows
        ]
        cursor = None
        if more and rows:
            _, n, k, ts, _, boot, seq, _, _ = rows[-1]
            cursor = encode_cursor((ts, n, boot, seq, k))
        return Page(readings, cursor)

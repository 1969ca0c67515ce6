"""Series (bucketed) and raw readings: the read model behind ``/api/series``, ``/api/readings``,
``/api/export`` and the WebSocket backfill.

A ``Source`` answers both kinds of question for a time range. ``SqliteSource`` reads the hot store
now. Cold data in Parquet (the rollup) becomes a second source, and a tiered source can then split
a range at the hot/cold boundary, ask each side, and concatenate: series buckets are aligned to
multiples of the bucket size from the epoch, and raw readings are ordered by ``(ts, id, metric)``,
so results from two sources join without re-sorting.

Everything here is synchronous and runs on a ``ReadPool`` thread.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "NICE_BUCKETS_MS",
    "Page",
    "Reading",
    "ReadingsQuery",
    "Series",
    "SeriesQuery",
    "Source",
    "SqliteSource",
    "auto_bucket",
    "decode_cursor",
    "encode_cursor",
]

S, M, H, D = 1000, 60_000, 3_600_000, 86_400_000
NICE_BUCKETS_MS = (
    1 * S, 2 * S, 5 * S, 10 * S, 15 * S, 30 * S,
    1 * M, 2 * M, 5 * M, 10 * M, 15 * M, 30 * M,
    1 * H, 2 * H, 3 * H, 6 * H, 12 * H, 1 * D, 2 * D, 7 * D, 30 * D,
)  # fmt: skip


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
    after: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    id: int
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


def encode_cursor(ts: int, message_id: int, metric_ref: int) -> str:
    return f"{ts}.{message_id}.{metric_ref}"


def decode_cursor(text: str) -> tuple[int, int, int] | None:
    """The position a cursor names, or None when it is not one of ours."""
    parts = text.split(".")
    if len(parts) != 3:
        return None
    try:
        ts, mid, ref = (int(p) for p in parts)
    except ValueError:
        return None
    if not (abs(ts) < 2**62 and 0 <= mid < 2**62 and 0 <= ref < 2**62):
        return None
    return ts, mid, ref


class Source(Protocol):
    """Where readings come from (SQLite now; Parquet for cold hours later)."""

    def series(self, conn: sqlite3.Connection, q: SeriesQuery) -> list[Series]: ...

    def readings(self, conn: sqlite3.Connection, q: ReadingsQuery) -> Page: ...


@dataclass(slots=True)
class _Refs:
    nodes: dict[int, str]
    metrics: dict[int, str]


def _refs(conn: sqlite3.Connection, q: SeriesQuery | ReadingsQuery) -> _Refs | None:
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
    return _Refs(nodes, metrics)


def _in(refs: dict[int, str]) -> str:
    # References are integers from our own tables, so inlining them is safe, and it lets SQLite
    # use the (node_ref, ts) index once per node.
    return ",".join(str(int(r)) for r in sorted(refs))


class SqliteSource:
    """The hot store. Queries walk ``messages (node_ref, ts)`` then the readings' primary key."""

    def series(self, conn: sqlite3.Connection, q: SeriesQuery) -> list[Series]:
        refs = _refs(conn, q)
        if refs is None:
            return []
        metric_filter = "" if not q.metrics else f"AND r.metric_ref IN ({_in(refs.metrics)})"
        rows = conn.execute(
            f"""
            SELECT m.node_ref, r.metric_ref, m.ts / :b AS k,
                   avg(r.value), min(r.value), max(r.value), count(*)
            FROM messages m CROSS JOIN readings r ON r.message_id = m.id
            WHERE m.node_ref IN ({_in(refs.nodes)}) AND m.ts >= :start AND m.ts < :end
              {metric_filter}
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
        refs = _refs(conn, q)
        if refs is None:
            return Page([], None)
        metric_filter = "" if not q.metrics else f"AND r.metric_ref IN ({_in(refs.metrics)})"
        after = ""
        args: dict[str, int] = {"start": q.start, "end": q.end, "limit": q.limit + 1}
        if q.after is not None:
            after = "AND (m.ts, m.id, r.metric_ref) > (:ats, :aid, :aref)"
            args.update(ats=q.after[0], aid=q.after[1], aref=q.after[2])
        rows = conn.execute(
            f"""
            SELECT m.id, m.node_ref, r.metric_ref, m.ts, m.received, m.boot, m.seq, m.flags,
                   r.value
            FROM messages m CROSS JOIN readings r ON r.message_id = m.id
            WHERE m.node_ref IN ({_in(refs.nodes)}) AND m.ts >= :start AND m.ts < :end
              {metric_filter} {after}
            ORDER BY m.ts, m.id, r.metric_ref
            LIMIT :limit
            """,
            args,
        ).fetchall()
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        readings = [
            Reading(mid, refs.nodes[n], refs.metrics.get(k, "?"), ts, rcv, boot, seq, flags, v)
            for mid, n, k, ts, rcv, boot, seq, flags, v in rows
        ]
        cursor = None
        if more and rows:
            last = rows[-1]
            cursor = encode_cursor(last[3], last[0], last[2])
        return Page(readings, cursor)

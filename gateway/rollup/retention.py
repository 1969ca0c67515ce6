"""Retention: hot rows leave SQLite, old Parquet leaves the disk. Plain SQL, no pyarrow.

A message leaves SQLite only when all three hold: its sample time is older than the hot window,
its hour is rolled with the message in it (``parquet_hours.max_id >= id``), and every enabled
upstream sink has delivered it (``delivered_upto``; with no sink enabled, rolled is enough).
Messages quarantined for their sample time are never rolled; they leave once their receive time
is older than the hot window and they are delivered.

Deletes run in small transactions (``PRUNE_CHUNK`` messages each) so ingest never waits long for
the one writer, and the WAL stays small.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.rollup.catalog import add_counters
from gateway.rollup.hours import HOUR_MS

__all__ = [
    "PRUNE_CHUNK",
    "DropCandidate",
    "delivered_upto",
    "drop_hours",
    "parquet_to_drop",
    "prune_candidates",
    "prune_excluded",
    "prune_hour",
]

PRUNE_CHUNK = 20_000


def delivered_upto(conn: sqlite3.Connection, sinks: Sequence[str]) -> int | None:
    """The retention hook: every ``messages.id`` up to the result is delivered by every sink.

    ``sinks`` are the names of the enabled sinks; a sink without a cursor row yet has delivered
    nothing. ``None`` means no sink is enabled, so nothing waits for delivery.
    """
    if not sinks:
        return None
    cursors = dict(
        conn.execute(
            f"SELECT name, cursor FROM sink_cursors WHERE name IN ({','.join('?' * len(sinks))})",
            list(sinks),
        ).fetchall()
    )
    return min(int(cursors.get(name, 0)) for name in sinks)


def prune_candidates(conn: sqlite3.Connection, cutoff_ms: int) -> list[tuple[int, int]]:
    """Catalogued hours that ended before ``cutoff_ms`` and may still have hot rows."""
    row = conn.execute("SELECT min(ts) FROM messages").fetchone()
    if row[0] is None:
        return []
    oldest = int(row[0]) - int(row[0]) % HOUR_MS
    return [
        (int(h), int(m))
        for h, m in conn.execute(
            "SELECT hour, max_id FROM parquet_hours WHERE hour >= ? AND hour + ? <= ? "
            "ORDER BY hour",
            (oldest, HOUR_MS, cutoff_ms),
        )
    ]


def prune_hour(
    conn: sqlite3.Connection, hour: int, max_id: int, delivered: int | None
) -> tuple[int, int]:
    """Delete up to ``PRUNE_CHUNK`` rolled and delivered messages of one hour.

    Returns (messages, reading rows) deleted; call again while it deletes something.
    """
    upto = max_id if delivered is None else min(max_id, delivered)
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM messages WHERE node_ref IN (SELECT node_ref FROM nodes) "
            "AND ts >= ? AND ts < ? AND id <= ? LIMIT ?",
            (hour, hour + HOUR_MS, upto, PRUNE_CHUNK),
        )
    ]
    if not ids:
        return 0, 0
    rows = _delete(conn, ids)
    conn.execute("UPDATE parquet_hours SET pruned = 1 WHERE hour = ?", (hour,))
    add_counters(conn, retention_messages=len(ids), retention_rows=rows)
    return len(ids), rows


def prune_excluded(
    conn: sqlite3.Connection, cutoff_ms: int, delivered: int | None
) -> tuple[int, int]:
    """Delete quarantined-for-time messages received before ``cutoff_ms`` and delivered."""
    upto = 2**62 if delivered is None else delivered
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT message_id FROM rollup_excluded WHERE received < ? AND message_id <= ? LIMIT ?",
            (cutoff_ms, upto, PRUNE_CHUNK),
        )
    ]
    if not ids:
        return 0, 0
    rows = _delete(conn, ids)
    conn.executemany("DELETE FROM rollup_excluded WHERE message_id = ?", [(i,) for i in ids])
    add_counters(conn, retention_messages=len(ids), retention_rows=rows)
    return len(ids), rows


def _delete(conn: sqlite3.Connection, ids: list[int]) -> int:
    params = [(i,) for i in ids]
    rows = conn.executemany("DELETE FROM readings WHERE message_id = ?", params).rowcount
    conn.executemany("DELETE FROM messages WHERE id = ?", params)
    return max(rows, 0)


@dataclass(frozen=True, slots=True)
class DropCandidate:
    hour: int
    path: str
    bytes: int


def parquet_to_drop(
    conn: sqlite3.Connection,
    *,
    older_than_ms: int | None = None,
    max_bytes: int | None = None,
    delivered: int | bool | None = False,
    need_bytes: int = 0,
) -> list[DropCandidate]:
    """Which Parquet hours to delete, oldest first.

    ``older_than_ms``: every hour that ended before it. ``max_bytes``: the oldest hours until the
    rest fits. ``need_bytes``: the oldest hours until this much is freed, limited to hours
    delivered up to ``delivered`` (an id, ``None`` for any hour, ``False`` for none).
    """
    sql = "SELECT hour, path, bytes FROM parquet_hours p WHERE dropped_at IS NULL"
    args: list[int] = []
    if need_bytes and delivered is not None and delivered is not False:
        # Delivered: no message of the hour above the cursor (pruned ones were delivered).
        sql += (
            " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.node_ref IN "
            "(SELECT node_ref FROM nodes) AND m.ts >= p.hour "
            "AND m.ts < p.hour + ? AND m.id > ?)"
        )
        args += [HOUR_MS, delivered]
    rows = conn.execute(sql + " ORDER BY hour", args)
    live = [DropCandidate(int(h), p, int(b)) for h, p, b in rows]
    out: dict[int, DropCandidate] = {}
    if older_than_ms is not None:
        out.update((c.hour, c) for c in live if c.hour + HOUR_MS <= older_than_ms)
    if max_bytes is not None:
        total = sum(c.bytes for c in live if c.hour not in out)
        for c in live:
            if total <= max_bytes:
                break
            if c.hour not in out:
                out[c.hour] = c
                total -= c.bytes
    if need_bytes > 0 and delivered is not False:
        freed = 0
        for c in live:
            if freed >= need_bytes:
                break
            out.setdefault(c.hour, c)
            freed += c.bytes
    return sorted(out.values(), key=lambda c: c.hour)


def drop_hours(
    conn: sqlite3.Connection, hours: Sequence[DropCandidate], now_ms: int, counter: str
) -> None:
    """Mark hours dropped and delete their ``hour_stats`` (the caller deletes the files after
    the commit)."""
    conn.executemany(
        "UPDATE parquet_hours SET dropped_at = ? WHERE hour = ?", [(now_ms, c.hour) for c in hours]
    )
    conn.executemany("DELETE FROM hour_stats WHERE hour = ?", [(c.hour,) for c in hours])
    add_counters(conn, **{counter: len(hours)})

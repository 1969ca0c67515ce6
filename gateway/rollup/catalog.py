"""The Parquet catalog and the rollup's bookkeeping in the store: plain SQL, no pyarrow.

Which hours need rolling is learnt incrementally: ``scan`` looks at the messages committed since
the last scan (``rollup_state.scanned_id``; ``messages.id`` follows commit order) and records their
hours in ``rollup_todo`` with the newest id seen. An hour leaves ``rollup_todo`` in the
transaction that records its file in ``parquet_hours`` (``record``), and only when the file
holds that newest id: a reading that arrives while its hour is being rolled keeps the hour due.
A late reading for a rolled hour makes the hour due again, and the re-roll replaces the file.

A message is *rolled* when the catalog holds its hour with ``max_id >= id``. Messages whose sample
time lies outside the accepted window around their receive time are never rolled: ``scan``
copies them to the quarantine table (reason and the message as JSON) and lists them in
``rollup_excluded`` so that retention can still delete them.

Every function that writes runs inside a store transaction (``StoreWriter.execute``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.rollup.hours import HOUR_MS, label

__all__ = [
    "HourEntry",
    "HourStats",
    "Rolled",
    "ScanResult",
    "Window",
    "add_counters",
    "check_files",
    "due_hours",
    "entries",
    "file_sha256",
    "get_state",
    "mark_for_reroll",
    "missing_stats",
    "record",
    "scan",
    "set_state",
]

#: Messages looked at per scan transaction, so that a first scan of a big store never holds
#: the writer for long.
SCAN_CHUNK = 200_000


@dataclass(frozen=True, slots=True)
class Window:
    """Accepted sample times: from ``past_ms`` before to ``future_ms`` after receive time."""

    past_ms: int
    future_ms: int


@dataclass(frozen=True, slots=True)
class HourStats:
    """Per (node, metric) of one rolled hour: count, sum, min and max of the values in its file.

    Columns of equal length, one entry per (node_ref, metric_ref); ``hour_stats`` rows.
    """

    node_ref: tuple[int, ...] = ()
    metric_ref: tuple[int, ...] = ()
    n: tuple[int, ...] = ()
    sum: tuple[float, ...] = ()
    min: tuple[float, ...] = ()
    max: tuple[float, ...] = ()

    def rows(self, hour: int) -> list[tuple[int, int, int, int, float, float, float]]:
        return list(
            zip(
                self.node_ref,
                self.metric_ref,
                [hour] * len(self.n),
                self.n,
                self.sum,
                self.min,
                self.max,
                strict=True,
            )
        )

    def to_json(self) -> dict[str, list[int] | list[float]]:
        return {
            "node_ref": list(self.node_ref),
            "metric_ref": list(self.metric_ref),
            "n": list(self.n),
            "sum": list(self.sum),
            "min": list(self.min),
            "max": list(self.max),
        }

    @classmethod
    def from_json(cls, d: dict[str, list[float]]) -> HourStats:
        return cls(
            tuple(int(x) for x in d["node_ref"]),
            tuple(int(x) for x in d["metric_ref"]),
            tuple(int(x) for x in d["n"]),
            tuple(float(x) for x in d["sum"]),
            tuple(float(x) for x in d["min"]),
            tuple(float(x) for x in d["max"]),
        )


@dataclass(frozen=True, slots=True)
class Rolled:
    """What the worker reports for one hour it wrote."""

    hour: int
    path: str
    rows: int
    bytes: int
    sha256: str
    max_id: int
    #: Over exactly the rows of the file (the hour's messages with id <= ``max_id``).
    stats: HourStats = HourStats()


@dataclass(frozen=True, slots=True)
class HourEntry:
    """One row of the catalog."""

    hour: int
    path: str
    rows: int
    bytes: int
    sha256: str
    max_id: int
    rolled_at: int
    rolls: int
    pruned: bool
    dropped_at: int | None


@dataclass(frozen=True, slots=True)
class ScanResult:
    scanned_to: int
    hours: int
    quarantined: int
    more: bool


def get_state(conn: sqlite3.Connection, name: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM rollup_state WHERE name = ?", (name,)).fetchone()
    return default if row is None else int(row[0])


def set_state(conn: sqlite3.Connection, name: str, value: int) -> None:
    conn.execute(
        "INSERT INTO rollup_state VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def add_counters(conn: sqlite3.Connection, **values: int) -> None:
    """Add to the store's ``counters`` (the totals ``roost stats`` shows)."""
    conn.executemany(
        "INSERT INTO counters VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        [(k, v) for k, v in values.items() if v],
    )


def scan(conn: sqlite3.Connection, window: Window, now_ms: int) -> ScanResult:
    """Record the hours of newly committed messages as due; quarantine out-of-window ones."""
    lo = get_state(conn, "scanned_id")
    top = int(conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
    hi = min(top, lo + SCAN_CHUNK)
    if hi <= lo:
        return ScanResult(lo, 0, 0, False)
    bad = conn.execute(
        "SELECT m.id, n.node_id, m.boot, m.seq, m.ts, m.received, m.uptime_ms, m.flags, "
        "       (SELECT json_group_object(k.name, r.value) FROM readings r "
        "        JOIN metrics k USING (metric_ref) WHERE r.message_id = m.id) "
        "FROM messages m JOIN nodes n USING (node_ref) "
        "WHERE m.id > ? AND m.id <= ? "
        "AND (m.ts < m.received - ? OR m.ts > m.received + ?)",
        (lo, hi, window.past_ms, window.future_ms),
    ).fetchall()
    for mid, node_id, boot, seq, ts, received, uptime, flags, metrics in bad:
        raw = json.dumps(
            {"b": boot, "s": seq, "t": ts, "u": uptime, "f": flags, "m": json.loads(metrics)},
            separators=(",", ":"),
        ).encode()
        reason = (
            f"sample time {ts} is outside the accepted window around its receive time "
            f"{received} (rollup.accept_past_days, rollup.accept_future_s): stored, not rolled"
        )
        conn.execute(
            "INSERT INTO quarantine (received, topic, node_id, reason, raw, raw_len) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (now_ms, f"roost/v1/{node_id}/readings", node_id, reason, raw, len(raw)),
        )
        conn.execute("INSERT OR IGNORE INTO rollup_excluded VALUES (?, ?)", (mid, received))
    cur = conn.execute(
        "INSERT INTO rollup_todo (hour, max_id) "
        "SELECT ts - ts % ? AS h, max(id) FROM messages "
        "WHERE id > ? AND id <= ? AND ts BETWEEN received - ? AND received + ? "
        "GROUP BY h "
        "ON CONFLICT (hour) DO UPDATE SET max_id = max(max_id, excluded.max_id)",
        (HOUR_MS, lo, hi, window.past_ms, window.future_ms),
    )
    set_state(conn, "scanned_id", hi)
    add_counters(conn, out_of_window=len(bad))
    return ScanResult(hi, max(cur.rowcount, 0), len(bad), hi < top)


def due_hours(
    conn: sqlite3.Connection, now_ms: int, grace_ms: int, only: int | None = None
) -> list[tuple[int, int | None]]:
    """Hours to roll now, oldest first, each with the id to merge after (or None).

    An hour is due once it has closed plus the grace period. When some of its rows have left
    SQLite (``pruned``) and its file is still there, the re-roll merges the file with the
    messages newer than the file (``max_id``); otherwise it rolls the hour from SQLite.
    """
    sql = (
        "SELECT t.hour, CASE WHEN p.pruned AND p.dropped_at IS NULL THEN p.max_id END "
        "FROM rollup_todo t LEFT JOIN parquet_hours p USING (hour) "
    )
    if only is not None:
        return [(int(h), m) for h, m in conn.execute(sql + "WHERE t.hour = ?", (only,))]
    rows = conn.execute(
        sql + "WHERE t.hour + ? + ? <= ? ORDER BY t.hour", (HOUR_MS, grace_ms, now_ms)
    ).fetchall()
    return [(int(h), m) for h, m in rows]


def mark_for_reroll(conn: sqlite3.Connection, hours: list[int]) -> None:
    """Make ``hours`` due again (their file is missing or damaged, or an operator asked)."""
    conn.executemany(
        "INSERT INTO rollup_todo (hour, max_id) VALUES (?, 0) ON CONFLICT (hour) DO NOTHING",
        [(h,) for h in hours],
    )


def record(conn: sqlite3.Connection, r: Rolled, now_ms: int) -> None:
    """Record a rolled hour and its ``hour_stats`` (replacing a previous roll's); the hour stops
    being due unless newer messages arrived meanwhile."""
    if r.rows:
        conn.execute("DELETE FROM hour_stats WHERE hour = ?", (r.hour,))
        conn.executemany(
            "INSERT INTO hour_stats VALUES (?, ?, ?, ?, ?, ?, ?)", r.stats.rows(r.hour)
        )
        conn.execute(
            "INSERT INTO parquet_hours (hour, path, rows, bytes, sha256, max_id, rolled_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hour) DO UPDATE SET "
            "path = excluded.path, rows = excluded.rows, bytes = excluded.bytes, "
            "sha256 = excluded.sha256, max_id = excluded.max_id, "
            "rolled_at = excluded.rolled_at, rolls = rolls + 1, dropped_at = NULL",
            (r.hour, r.path, r.rows, r.bytes, r.sha256, r.max_id, now_ms),
        )
    conn.execute("DELETE FROM rollup_todo WHERE hour = ? AND max_id <= ?", (r.hour, r.max_id))
    add_counters(conn, rollup_hours=1, rollup_rows=r.rows)


def missing_stats(conn: sqlite3.Connection) -> list[int]:
    """Live catalogued hours without ``hour_stats`` rows: rolled before schema 4 added them.

    The scheduler rolls them again (from SQLite, or merged from the file when pruned), which
    records their stats; the file's content does not change.
    """
    return [
        int(h)
        for (h,) in conn.execute(
            "SELECT hour FROM parquet_hours p WHERE dropped_at IS NULL AND rows > 0 "
            "AND NOT EXISTS (SELECT 1 FROM hour_stats s WHERE s.hour = p.hour) ORDER BY hour"
        )
    ]


def entries(conn: sqlite3.Connection, *, include_dropped: bool = False) -> list[HourEntry]:
    """The catalog, oldest hour first."""
    where = "" if include_dropped else "WHERE dropped_at IS NULL "
    return [
        HourEntry(h, p, n, b, s, m, at, rolls, bool(pr), d)
        for h, p, n, b, s, m, at, rolls, pr, d in conn.execute(
            "SELECT hour, path, rows, bytes, sha256, max_id, rolled_at, rolls, pruned, "
            f"dropped_at FROM parquet_hours {where}ORDER BY hour"
        )
    ]


def check_files(conn: sqlite3.Connection, root: Path) -> tuple[list[int], list[str]]:
    """Find catalogued files that are gone or have the wrong size (a cheap check, no reads).

    Returns the hours to roll again and a problem line for each; an hour whose rows have partly
    left SQLite can only be rolled again from what SQLite still holds, which the line says.
    Files of dropped hours that a crash left behind are deleted.
    """
    hours: list[int] = []
    problems: list[str] = []
    for e in entries(conn, include_dropped=True):
        path = root / e.path
        if e.dropped_at is not None:
            path.unlink(missing_ok=True)
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size == e.bytes:
            continue
        what = "is missing" if size < 0 else f"has {size} bytes, the catalog says {e.bytes}"
        loss = (
            "; its rows that already left SQLite cannot be restored (restore the file from a copy)"
            if e.pruned
            else "; rolling it again from SQLite"
        )
        problems.append(f"{label(e.hour)}: {e.path} {what}{loss}")
        hours.append(e.hour)
    return hours, problems


def file_sha256(path: Path) -> str:
    """The checksum the catalog records for a Parquet file (and ``roost parquet verify`` checks)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

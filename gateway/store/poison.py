"""The store's side of the poison-message breaker: the run marker and the fingerprints of
messages that were being handled when a run died (tables ``ingest_state`` and ``poison``).

Each function is a job for ``StoreWriter.execute`` (one transaction on the store thread), so the
breaker's state is as durable as a committed reading and goes through the store's one door.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["begin_run", "charge", "clear", "end_run"]


def begin_run(conn: sqlite3.Connection) -> bool:
    """Mark an ingest run as started; True when the previous run never stopped cleanly."""
    row = conn.execute("SELECT value FROM ingest_state WHERE name = 'running'").fetchone()
    conn.execute(
        "INSERT INTO ingest_state VALUES ('running', 1) "
        "ON CONFLICT (name) DO UPDATE SET value = 1"
    )
    return bool(row and row[0])


def end_run(conn: sqlite3.Connection) -> None:
    """A clean stop: the next run is not suspicious."""
    conn.execute("UPDATE ingest_state SET value = 0 WHERE name = 'running'")


def charge(conn: sqlite3.Connection, fp: bytes, topic: str, size: int) -> int:
    """Count one more death of a run that was handling the message ``fp`` and return the count.

    Called before the message is handled again, so if this run dies too the count stays.
    """
    row = conn.execute(
        "INSERT INTO poison VALUES (?, 1, ?, ?, ?) "
        "ON CONFLICT (fp) DO UPDATE SET deaths = deaths + 1, last_seen = excluded.last_seen "
        "RETURNING deaths",
        (fp, topic[:512], size, int(time.time() * 1000)),
    ).fetchone()
    return int(row[0])


def clear(conn: sqlite3.Connection, fp: bytes) -> None:
    """The message ``fp`` was handled (stored or quarantined): forget it."""
    conn.execute("DELETE FROM poison WHERE fp = ?", (fp,))

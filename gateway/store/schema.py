"""The SQLite schema and its migrations (docs/schema.md describes every table).

A reading message is one row in ``messages`` (identity, times, flags) and one row per metric in
``readings`` (value). Storing the identity once per message rather than once per metric keeps rows
small, which is what an SD card's write budget cares about, and lets the unique key on
``messages (node_ref, boot, seq)`` make redeliveries duplicates by construction; ``readings``'
primary key ``(message_id, metric_ref)`` then keeps ``(node_id, boot, seq, metric)`` unique.
``messages.id`` is assigned in commit order and is the outbox cursor for upstream sinks.

Migrations are append-only: each entry upgrades the schema by one version inside the same
``BEGIN IMMEDIATE`` transaction that records it in ``schema_version``.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "connect", "migrate"]

MIGRATIONS: tuple[str, ...] = (
    # 1: the gateway core.
    """
    CREATE TABLE nodes (
        node_ref    INTEGER PRIMARY KEY,
        node_id     TEXT NOT NULL UNIQUE,
        first_seen  INTEGER NOT NULL,      -- epoch ms
        last_seen   INTEGER NOT NULL,
        state       TEXT,                  -- online | offline | safe_mode, from status messages
        state_at    INTEGER,
        fw          TEXT,
        board       TEXT,
        boot        INTEGER,
        ip          TEXT,
        rssi        INTEGER,
        mem_free    INTEGER,
        dropped     INTEGER,
        synthetic_seq INTEGER NOT NULL DEFAULT 0  -- next seq for firmware without identity
    );
    CREATE TABLE metrics (
        metric_ref  INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE
    );
    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY,   -- commit order: the outbox cursor
        node_ref    INTEGER NOT NULL REFERENCES nodes,
        boot        INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        ts          INTEGER NOT NULL,      -- epoch ms of the sample (see flags)
        received    INTEGER NOT NULL,      -- epoch ms at the gateway
        uptime_ms   INTEGER,
        flags       INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX messages_identity ON messages (node_ref, boot, seq);
    CREATE INDEX messages_node_ts ON messages (node_ref, ts);
    CREATE TABLE readings (
        message_id  INTEGER NOT NULL REFERENCES messages,
        metric_ref  INTEGER NOT NULL REFERENCES metrics,
        value       REAL NOT NULL,
        PRIMARY KEY (message_id, metric_ref)
    ) WITHOUT ROWID;
    CREATE TABLE latest (
        node_ref    INTEGER NOT NULL,
        metric_ref  INTEGER NOT NULL,
        ts          INTEGER NOT NULL,
        value       REAL NOT NULL,
        message_id  INTEGER NOT NULL,
        PRIMARY KEY (node_ref, metric_ref)
    ) WITHOUT ROWID;
    -- The loss ledger: per node, boot and hour of sample time, which seqs arrived.
    CREATE TABLE ledger (
        node_ref    INTEGER NOT NULL,
        boot        INTEGER NOT NULL,
        hour        INTEGER NOT NULL,      -- epoch ms of the hour's start
        min_seq     INTEGER NOT NULL,
        max_seq     INTEGER NOT NULL,
        received    INTEGER NOT NULL,      -- distinct messages
        PRIMARY KEY (node_ref, boot, hour)
    ) WITHOUT ROWID;
    -- Per boot: the offset from the node's uptime to epoch time, from its last timed message.
    CREATE TABLE boots (
        node_ref    INTEGER NOT NULL,
        boot        INTEGER NOT NULL,
        first_seen  INTEGER NOT NULL,
        time_offset_ms INTEGER,
        PRIMARY KEY (node_ref, boot)
    ) WITHOUT ROWID;
    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY,
        received    INTEGER NOT NULL,
        topic       TEXT NOT NULL,
        node_id     TEXT,
        reason      TEXT NOT NULL,
        raw         BLOB NOT NULL,         -- the first ingest.quarantine_raw_bytes bytes
        raw_len     INTEGER NOT NULL
    );
    CREATE TABLE commands (
        id          TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        op          TEXT,
        body        TEXT,
        sent_at     INTEGER,
        acked_at    INTEGER,
        ok          INTEGER,
        error       TEXT
    );
    CREATE TABLE counters (
        name        TEXT PRIMARY KEY,
        value       INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: upstream sync (gateway/sync): one durable cursor per sink, and the dead letters.
    """
    CREATE TABLE sink_cursors (
        name        TEXT PRIMARY KEY,
        type        TEXT NOT NULL,
        cursor      INTEGER NOT NULL DEFAULT 0,   -- every messages.id <= cursor is delivered
        live_from   INTEGER,                      -- while a backlog drains: the frozen head
        live_cursor INTEGER,                      -- delivered up to here above live_from
        delivered   INTEGER NOT NULL DEFAULT 0,
        dead_letters INTEGER NOT NULL DEFAULT 0,
        state       TEXT,
        last_error  TEXT,
        updated     INTEGER
    );
    CREATE TABLE dead_letters (
        id          INTEGER PRIMARY KEY,
        sink        TEXT NOT NULL,
        message_id  INTEGER NOT NULL,
        node_id     TEXT NOT NULL,
        boot        INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        payload     BLOB NOT NULL,
        reason      TEXT NOT NULL,
        at          INTEGER NOT NULL
    );
    CREATE INDEX dead_letters_sink ON dead_letters (sink, id);
    """,
    # 3: hourly Parquet rollup, retention and the disk budget (gateway/rollup, docs/parquet.md).
    """
    -- The Parquet catalog: one row per rolled UTC hour.
    CREATE TABLE parquet_hours (
        hour        INTEGER PRIMARY KEY,   -- epoch ms of the hour's start
        path        TEXT NOT NULL,         -- relative to <data_dir>/parquet
        rows        INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        sha256      TEXT NOT NULL,
        max_id      INTEGER NOT NULL,      -- the file holds the hour's messages with id <= this
        rolled_at   INTEGER NOT NULL,
        rolls       INTEGER NOT NULL DEFAULT 1,
        pruned      INTEGER NOT NULL DEFAULT 0,  -- hot rows deleted: the file is their copy
        dropped_at  INTEGER                -- retention or the budget deleted the file
    );
    -- Hours with messages the catalog does not hold yet, and the newest such message.
    CREATE TABLE rollup_todo (
        hour        INTEGER PRIMARY KEY,
        max_id      INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Messages whose sample time is outside the accepted window: never rolled.
    CREATE TABLE rollup_excluded (
        message_id  INTEGER PRIMARY KEY,
        received    INTEGER NOT NULL
    );
    CREATE TABLE rollup_state (
        name        TEXT PRIMARY KEY,      -- scanned_id, budget_paused_since, ...
        value       INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 4: hourly aggregates per node and metric, recorded with each rolled hour in the same
    # transaction as its catalog entry (gateway/rollup). Long-range series read these instead of
    # every raw row, and they outlive the hot rows (retention prunes SQLite, not these); they go
    # when the hour's Parquet file is dropped. They cover exactly the hour's messages with
    # id <= parquet_hours.max_id; later (late) messages are added from raw rows until re-rolled.
    """
    CREATE TABLE hour_stats (
        node_ref    INTEGER NOT NULL,
        metric_ref  INTEGER NOT NULL,
        hour        INTEGER NOT NULL,      -- epoch ms of the UTC hour's start
        n           INTEGER NOT NULL,      -- readings in the hour
        sum         REAL NOT NULL,
        min         REAL NOT NULL,
        max         REAL NOT NULL,
        PRIMARY KEY (node_ref, metric_ref, hour)
    ) WITHOUT ROWID;
    CREATE INDEX hour_stats_hour ON hour_stats (hour);
    """,
    # 5: the poison-message breaker (gateway/ingest/poison.py). ingest_state holds whether an
    # ingest run is in progress (set at start, cleared at a clean stop: found set, the last run
    # died); poison the messages that were being handled when a run died, by fingerprint.
    """
    CREATE TABLE ingest_state (
        name        TEXT PRIMARY KEY,      -- running
        value       INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE poison (
        fp          BLOB PRIMARY KEY,      -- blake2b-128 of topic and payload
        deaths      INTEGER NOT NULL,      -- runs that died while handling it
        topic       TEXT NOT NULL,
        size        INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL       -- epoch ms
    ) WITHOUT ROWID;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str, *, synchronous: str = "full", readonly: bool = False) -> sqlite3.Connection:
    """Open the store with the pragmas every connection needs (WAL, busy timeout)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found before."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
    )
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    found = int(row[0] or 0)
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the store has schema version {found}, newer than this Roost knows "
            f"({SCHEMA_VERSION}): upgrade Roost or use another data dir"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        # One script per version, inside the transaction that records it: a crash mid-way
        # leaves the previous version, never half of this one.
        stamp = int(time.time() * 1000)
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[version - 1]};"
                f" INSERT INTO schema_version VALUES ({version}, {stamp}); COMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return found

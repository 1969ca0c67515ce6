"""Read-only queries on the store for people and programs: totals, nodes, quarantine.

Readers open their own connections (WAL lets them read while the writer commits), so the
CLI can inspect a running gateway's data dir.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.store import schema

__all__ = [
    "NodeRow",
    "Stats",
    "StoreMissing",
    "db_path",
    "open_readonly",
    "read_nodes",
    "read_stats",
]

COUNTERS = (
    "publishes",
    "messages",
    "stored",
    "duplicates",
    "rows",
    "quarantined",
    "statuses",
    "command_acks",
)

# Lost readings per (node, boot): seqs start at 0 on every boot, so anything up to the highest
# seq seen that did not arrive is a gap.
_LOST_PER_BOOT = """
    SELECT node_ref, boot, max(max_seq) + 1 - sum(received) AS lost
    FROM ledger GROUP BY node_ref, boot
"""


class StoreMissing(Exception):
    """There is no store in the data dir yet."""


def db_path(data_dir: Path) -> Path:
    """Where the SQLite store lives in a data dir."""
    return data_dir / "roost.sqlite3"


def open_readonly(data_dir: Path) -> sqlite3.Connection:
    path = db_path(data_dir)
    if not path.is_file():
        raise StoreMissing(
            f"no Roost store at {path}: start the gateway with `roost run --data-dir {data_dir}` "
            "or pass the --data-dir it uses"
        )
    return schema.connect(str(path), readonly=True)


@dataclass(frozen=True, slots=True)
class Stats:
    """Totals as stored."""

    publishes: int
    messages: int
    stored: int
    duplicates: int
    rows: int
    quarantined: int
    statuses: int
    command_acks: int
    nodes: int
    seq_gaps: int
    db_bytes: int


def read_stats(conn: sqlite3.Connection, data_dir: Path | None = None) -> Stats:
    counters = dict.fromkeys(COUNTERS, 0)
    counters.update(
        {k: int(v) for k, v in conn.execute("SELECT name, value FROM counters") if k in counters}
    )
    nodes = int(conn.execute("SELECT count(*) FROM nodes").fetchone()[0])
    gaps = int(conn.execute(f"SELECT coalesce(sum(lost), 0) FROM ({_LOST_PER_BOOT})").fetchone()[0])
    size = 0
    if data_dir is not None:
        base = db_path(data_dir)
        for suffix in ("", "-wal", "-shm"):
            p = base.with_name(base.name + suffix)
            if p.exists():
                size += p.stat().st_size
    return Stats(nodes=nodes, seq_gaps=gaps, db_bytes=size, **counters)


@dataclass(frozen=True, slots=True)
class NodeRow:
    node_id: str
    state: str | None
    first_seen: int
    last_seen: int
    fw: str | None
    board: str | None
    boot: int | None
    ip: str | None
    rssi: int | None
    mem_free: int | None
    dropped: int | None
    messages: int
    lost: int


def read_nodes(conn: sqlite3.Connection) -> list[NodeRow]:
    rows = conn.execute(
        f"""
        SELECT n.node_id, n.state, n.first_seen, n.last_seen, n.fw, n.board, n.boot, n.ip,
               n.rssi, n.mem_free, n.dropped,
               coalesce((SELECT sum(received) FROM ledger l WHERE l.node_ref = n.node_ref), 0),
               coalesce((SELECT sum(lost) FROM ({_LOST_PER_BOOT}) g
                         WHERE g.node_ref = n.node_ref), 0)
        FROM nodes n ORDER BY n.node_id
        """
    ).fetchall()
    return [NodeRow(*r) for r in rows]


@dataclass(frozen=True, slots=True)
class SinkRow:
    """One upstream sink's sync state as last recorded by its runner."""

    name: str
    type: str
    state: str | None
    last_error: str | None
    cursor: int
    delivered: int
    dead_letters: int
    backlog: int
    oldest_undelivered_ms: int | None
    updated: int | None


def read_sinks(conn: sqlite3.Connection) -> list[SinkRow]:
    """Sync state per sink; the backlog is counted from the store, not from the target."""
    try:
        rows = conn.execute(
            "SELECT name, type, state, last_error, cursor, delivered, dead_letters, updated "
            "FROM sink_cursors ORDER BY name"
        ).fetchall()
    except sqlite3.OperationalError:
        return []  # a store from before upstream sync
    out = []
    for name, kind, state, error, cursor, delivered, dead, updated in rows:
        backlog, oldest = conn.execute(
            "SELECT count(*), min(received) FROM messages WHERE id > ?", (cursor,)
        ).fetchone()
        out.append(
            SinkRow(name, kind, state, error, cursor, delivered, dead, backlog, oldest, updated)
        )
    return out

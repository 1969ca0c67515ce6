"""Nodes, quarantine and commands as the API shows them: read on a ``ReadPool`` thread.

The response types are msgspec structs so the OpenAPI schema describes every field.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from gateway.store.reader import read_nodes

__all__ = [
    "CommandView",
    "Completeness",
    "HourCompleteness",
    "Latest",
    "NodeView",
    "QuarantineView",
    "read_commands",
    "read_node_views",
    "read_quarantine",
]

HOUR_MS = 3_600_000


class Latest(msgspec.Struct, frozen=True):
    value: float
    ts: int


class HourCompleteness(msgspec.Struct, frozen=True):
    hour: int
    received: int
    expected: int
    pct: float


class Completeness(msgspec.Struct, frozen=True):
    """Messages that arrived / messages the seq numbers say were sent, over the last hours."""

    hours: int
    received: int
    expected: int
    pct: float | None
    hourly: list[HourCompleteness]


class NodeView(msgspec.Struct, frozen=True):
    node_id: str
    #: online | stale | offline | safe_mode | unknown (see docs/api.md)
    status: str
    online: bool
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
    latest: dict[str, Latest]
    completeness: Completeness


class QuarantineView(msgspec.Struct, frozen=True):
    id: int
    received: int
    topic: str
    node_id: str | None
    reason: str
    raw: str
    raw_len: int


class CommandView(msgspec.Struct, frozen=True):
    id: str
    node_id: str
    op: str | None
    body: Any
    sent_at: int | None
    acked_at: int | None
    ok: bool | None
    error: str | None


def _status(state: str | None, last_seen: int, now: int, stale_ms: int) -> str:
    if state in ("offline", "safe_mode"):
        return state
    if now - last_seen > stale_ms:
        return "stale" if state == "online" else "unknown"
    # Recent data counts as online even without a birth message (mapped firmware has none).
    return "online"


def read_node_views(
    conn: sqlite3.Connection,
    now: int,
    stale_ms: int,
    hours: int = 24,
    node_id: str | None = None,
) -> list[NodeView]:
    """Every node (or the one named) with latest values and completeness over ``hours``."""
    rows = [n for n in read_nodes(conn) if node_id is None or n.node_id == node_id]
    if not rows:
        return []
    where = "" if node_id is None else "WHERE n.node_id = :node"
    latest: dict[str, dict[str, Latest]] = {}
    for nid, name, ts, value in conn.execute(
        "SELECT n.node_id, k.name, l.ts, l.value FROM latest l "
        f"JOIN nodes n USING (node_ref) JOIN metrics k USING (metric_ref) {where} "
        "ORDER BY k.name",
        {"node": node_id},
    ):
        latest.setdefault(nid, {})[name] = Latest(value, ts)
    since = (now // HOUR_MS - hours + 1) * HOUR_MS
    hourly: dict[str, list[HourCompleteness]] = {}
    for nid, hour, received, expected in conn.execute(
        "SELECT n.node_id, l.hour, sum(l.received), sum(l.max_seq - l.min_seq + 1) "
        f"FROM ledger l JOIN nodes n USING (node_ref) {where} "
        f"{'AND' if where else 'WHERE'} l.hour >= :since "
        "GROUP BY n.node_id, l.hour ORDER BY l.hour",
        {"node": node_id, "since": since},
    ):
        pct = round(100.0 * min(received, expected) / expected, 2) if expected else 100.0
        hourly.setdefault(nid, []).append(HourCompleteness(hour, received, expected, pct))
    out = []
    for n in rows:
        hs = hourly.get(n.node_id, [])
        got = sum(h.received for h in hs)
        want = sum(h.expected for h in hs)
        status = _status(n.state, n.last_seen, now, stale_ms)
        out.append(
            NodeView(
                node_id=n.node_id,
                status=status,
                online=status == "online",
                state=n.state,
                first_seen=n.first_seen,
                last_seen=n.last_seen,
                fw=n.fw,
                board=n.board,
                boot=n.boot,
                ip=n.ip,
                rssi=n.rssi,
                mem_free=n.mem_free,
                dropped=n.dropped,
                messages=n.messages,
                lost=n.lost,
                latest=latest.get(n.node_id, {}),
                completeness=Completeness(
                    hours=hours,
                    received=got,
                    expected=want,
                    pct=round(100.0 * min(got, want) / want, 2) if want else None,
                    hourly=hs,
                ),
            )
        )
    return out


def read_quarantine(
    conn: sqlite3.Connection, limit: int, raw_chars: int = 512
) -> list[QuarantineView]:
    """The newest bad inputs first; raw bytes shown as text (invalid UTF-8 replaced)."""
    return [
        QuarantineView(
            i, rcv, topic, node, reason, bytes(raw[:raw_chars]).decode("utf-8", "replace"), n
        )
        for i, rcv, topic, node, reason, raw, n in conn.execute(
            "SELECT id, received, topic, node_id, reason, raw, raw_len FROM quarantine "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
    ]


def read_commands(conn: sqlite3.Connection, node_id: str, limit: int) -> list[CommandView]:
    """A node's newest commands and their acknowledgements."""
    out = []
    for cid, nid, op, body, sent, acked, ok, error in conn.execute(
        "SELECT id, node_id, op, body, sent_at, acked_at, ok, error FROM commands "
        "WHERE node_id = ? ORDER BY coalesce(sent_at, acked_at) DESC LIMIT ?",
        (node_id, limit),
    ):
        try:
            decoded = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            decoded = body
        out.append(
            CommandView(cid, nid, op, decoded, sent, acked, None if ok is None else bool(ok), error)
        )
    return out

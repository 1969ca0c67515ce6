"""The store writer: the only owner of the SQLite write connection.

Ingest hands it ``Unit``s (the decoded content of one batch of MQTT messages plus a callback that
acknowledges them). The writer gathers units into one transaction (until ``batch_max_rows``
reading rows or ``batch_max_ms`` after the first, whichever first), commits, and only then calls
each unit's callback: a QoS1 PUBACK never leaves before its reading is on disk.

The connection lives on one dedicated thread and every transaction is one call of ``_commit`` on
that thread (the unit-of-work model Datasette uses). That keeps a transaction one function and one
thread hop instead of a dozen awaits, and keeps the caches of node and metric references owned by
that thread alone. A failed commit (disk full, I/O error) is rolled back, logged once, counted and
retried with backoff; its units are never acknowledged, so the broker keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gateway.model import CommandAck, Flags, Message, NodeStatus, Rejected
from gateway.store import schema

__all__ = ["CommitResult", "StoreWriter", "StoredMessage", "Unit", "now_ms"]

log = logging.getLogger("roost.store")

HOUR_MS = 3_600_000
_TIME_DERIVED = int(Flags.TIME_DERIVED)
_TIME_RECEIVED = int(Flags.TIME_RECEIVED)


@dataclass(slots=True)
class Unit:
    """What one inbound batch decoded to, and how to acknowledge it once committed."""

    items: Sequence[Message | NodeStatus | CommandAck | Rejected]
    received_ms: int
    publishes: int = 0
    on_commit: Callable[[], object] | None = None

    @property
    def rows(self) -> int:
        return sum(len(i.metrics) if type(i) is Message else 1 for i in self.items)


class StoredMessage(NamedTuple):
    """A message as committed: its cursor id, identity, times, flags and metrics."""

    id: int
    node_id: str
    boot: int
    seq: int
    ts: int
    received: int
    flags: int
    metrics: tuple[tuple[str, float], ...]


@dataclass(slots=True)
class CommitResult:
    """What one transaction stored: handed to the writer's listeners after the commit."""

    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    rows: int = 0
    quarantined: int = 0
    statuses: list[NodeStatus] = field(default_factory=list)
    #: Nodes that sent readings without a time of their own and have no sync for that boot.
    untimed_nodes: set[str] = field(default_factory=set)
    #: Every message this transaction stored, in commit order (the live feed reads these).
    committed: list[StoredMessage] = field(default_factory=list)


class _State:
    """Caches owned by the writer thread."""

    def __init__(self, conn: sqlite3.Connection, raw_limit: int) -> None:
        self.conn = conn
        self.raw_limit = raw_limit
        self.nodes: dict[str, int] = dict(conn.execute("SELECT node_id, node_ref FROM nodes"))
        self.metrics: dict[str, int] = dict(conn.execute("SELECT name, metric_ref FROM metrics"))
        self.synthetic: dict[int, int] = dict(
            conn.execute("SELECT node_ref, synthetic_seq FROM nodes")
        )
        self.offsets: dict[tuple[int, int], int | None] = {}
        self.next_id = int(
            conn.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchone()[0]
        )

    def node_ref(self, node_id: str, now: int) -> int:
        ref = self.nodes.get(node_id)
        if ref is None:
            cur = self.conn.execute(
                "INSERT INTO nodes (node_id, first_seen, last_seen) VALUES (?, ?, ?)",
                (node_id, now, now),
            )
            ref = int(cur.lastrowid or 0)
            self.nodes[node_id] = ref
            self.synthetic[ref] = 0
        return ref

    def metric_ref(self, name: str) -> int:
        ref = self.metrics.get(name)
        if ref is None:
            cur = self.conn.execute("INSERT INTO metrics (name) VALUES (?)", (name,))
            ref = int(cur.lastrowid or 0)
            self.metrics[name] = ref
        return ref

    def load_boot(self, node_ref: int, boot: int) -> bool:
        """Cache the boot's time offset; ``False`` when the boot is new to the store."""
        row = self.conn.execute(
            "SELECT time_offset_ms FROM boots WHERE node_ref = ? AND boot = ?", (node_ref, boot)
        ).fetchone()
        self.offsets[(node_ref, boot)] = None if row is None else row[0]
        return row is not None

    def forget(self) -> None:
        """After a rollback the caches may name rows that no longer exist: reload them."""
        self.__init__(self.conn, self.raw_limit)  # type: ignore[misc]


def _commit(state: _State, units: Sequence[Unit]) -> CommitResult:
    """One transaction for all the units; runs on the writer thread."""
    conn = state.conn
    result = CommitResult()
    counters: dict[str, int] = {}
    msg_rows: list[tuple[int, int, int, int, int, int, int | None, int]] = []
    # id, message, node_ref, boot, seq, ts, received, flags
    pending: list[tuple[int, Message, int, int, int, int, int, int]] = []
    statuses: list[tuple[NodeStatus, int]] = []
    acks: list[tuple[CommandAck, int]] = []
    rejects: list[tuple[Rejected, int]] = []
    node_seen: dict[int, int] = {}
    new_offsets: dict[tuple[int, int], int] = {}
    new_boots: dict[tuple[int, int], int] = {}
    publishes = 0

    conn.execute("BEGIN IMMEDIATE")
    try:
        next_id = state.next_id
        for unit in units:
            now = unit.received_ms
            publishes += unit.publishes
            for item in unit.items:
                kind = type(item)
                if kind is Message:
                    msg: Message = item  # type: ignore[assignment]
                    ref = state.node_ref(msg.node_id, now)
                    boot, seq, flags = msg.boot, msg.seq, msg.flags
                    if boot is None or seq is None:
                        boot = 0
                        seq = state.synthetic[ref]
                        state.synthetic[ref] = seq + 1
                    if (ref, boot) not in state.offsets and not state.load_boot(ref, boot):
                        new_boots[(ref, boot)] = now
                    t = msg.t
                    if t is not None:
                        ts = t
                        if msg.uptime_ms is not None:
                            off = t - msg.uptime_ms
                            if state.offsets.get((ref, boot)) != off:
                                state.offsets[(ref, boot)] = off
                                new_offsets[(ref, boot)] = off
                    else:
                        off_known = state.offsets.get((ref, boot))
                        if off_known is not None and msg.uptime_ms is not None:
                            ts = msg.uptime_ms + off_known
                            flags |= _TIME_DERIVED
                        else:
                            ts = now
                            flags |= _TIME_RECEIVED
                            result.untimed_nodes.add(msg.node_id)
                    msg_rows.append((next_id, ref, boot, seq, ts, now, msg.uptime_ms, flags))
                    pending.append((next_id, msg, ref, boot, seq, ts, now, flags))
                    next_id += 1
                    if node_seen.get(ref, 0) < now:
                        node_seen[ref] = now
                elif kind is NodeStatus:
                    statuses.append((item, now))  # type: ignore[arg-type]
                elif kind is CommandAck:
                    acks.append((item, now))  # type: ignore[arg-type]
                else:
                    rejects.append((item, now))  # type: ignore[arg-type]

        result.messages = len(msg_rows)
        inserted = pending
        if msg_rows:
            cur = conn.executemany(
                "INSERT OR IGNORE INTO messages "
                "(id, node_ref, boot, seq, ts, received, uptime_ms, flags) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                msg_rows,
            )
            if cur.rowcount != len(msg_rows):
                kept = {
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM messages WHERE id BETWEEN ? AND ?",
                        (msg_rows[0][0], msg_rows[-1][0]),
                    )
                }
                inserted = [p for p in pending if p[0] in kept]
        state.next_id = next_id
        result.stored = len(inserted)
        result.duplicates = result.messages - result.stored

        metric_ref = state.metric_ref
        rows: list[tuple[int, int, float]] = []
        latest: dict[tuple[int, int], tuple[int, float, int]] = {}
        ledger: dict[tuple[int, int, int], list[int]] = {}
        for mid, msg, ref, boot, seq, ts, received, flags in inserted:
            for name, value in msg.metrics:
                mref = metric_ref(name)
                rows.append((mid, mref, value))
                prev = latest.get((ref, mref))
                if prev is None or prev[0] <= ts:
                    latest[(ref, mref)] = (ts, value, mid)
            key = (ref, boot, ts - ts % HOUR_MS)
            entry = ledger.get(key)
            if entry is None:
                ledger[key] = [seq, seq, 1]
            else:
                if seq < entry[0]:
                    entry[0] = seq
                if seq > entry[1]:
                    entry[1] = seq
                entry[2] += 1
            result.committed.append(
                StoredMessage(mid, msg.node_id, boot, seq, ts, received, flags, msg.metrics)
            )
        if rows:
            conn.executemany("INSERT OR IGNORE INTO readings VALUES (?, ?, ?)", rows)
            result.rows = len(rows)
            conn.executemany(
                "INSERT INTO latest (node_ref, metric_ref, ts, value, message_id) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_ref, metric_ref) DO UPDATE SET "
                "ts = excluded.ts, value = excluded.value, message_id = excluded.message_id "
                "WHERE excluded.ts >= latest.ts",
                [(n, m, ts, v, i) for (n, m), (ts, v, i) in latest.items()],
            )
        if ledger:
            conn.executemany(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (node_ref, boot, hour) DO UPDATE SET "
                "min_seq = min(min_seq, excluded.min_seq), "
                "max_seq = max(max_seq, excluded.max_seq), "
                "received = received + excluded.received",
                [(n, b, h, e[0], e[1], e[2]) for (n, b, h), e in ledger.items()],
            )
        if new_boots:
            conn.executemany(
                "INSERT OR IGNORE INTO boots (node_ref, boot, first_seen) VALUES (?, ?, ?)",
                [(n, b, t) for (n, b), t in new_boots.items()],
            )
        if new_offsets:
            conn.executemany(
                "UPDATE boots SET time_offset_ms = ? WHERE node_ref = ? AND boot = ?",
                [(off, n, b) for (n, b), off in new_offsets.items()],
            )
        if node_seen:
            conn.executemany(
                "UPDATE nodes SET last_seen = max(last_seen, ?), synthetic_seq = ? "
                "WHERE node_ref = ?",
                [(t, state.synthetic.get(n, 0), n) for n, t in node_seen.items()],
            )
        for status, now in statuses:
            ref = state.node_ref(status.node_id, now)
            conn.execute(
                "UPDATE nodes SET state = ?, state_at = ?, last_seen = max(last_seen, ?), "
                "fw = coalesce(?, fw), board = coalesce(?, board), boot = coalesce(?, boot), "
                "ip = coalesce(?, ip), rssi = coalesce(?, rssi), "
                "mem_free = coalesce(?, mem_free), dropped = coalesce(?, dropped) "
                "WHERE node_ref = ?",
                (
                    status.state,
                    now,
                    now,
                    status.fw,
                    status.board,
                    status.boot,
                    status.ip,
                    status.rssi,
                    status.mem_free,
                    status.dropped,
                    ref,
                ),
            )
            result.statuses.append(status)
        for ack, now in acks:
            conn.execute(
                "INSERT INTO commands (id, node_id, acked_at, ok, error) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET acked_at = excluded.acked_at, "
                "ok = excluded.ok, error = excluded.error",
                (ack.command_id, ack.node_id, now, int(ack.ok), ack.error),
            )
        if rejects:
            limit = state.raw_limit
            conn.executemany(
                "INSERT INTO quarantine (received, topic, node_id, reason, raw, raw_len) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        now,
                        r.topic[:1024],
                        r.node_id,
                        r.reason[:1024],
                        r.payload[:limit],
                        len(r.payload),
                    )
                    for r, now in rejects
                ],
            )
            result.quarantined = len(rejects)
        counters["publishes"] = publishes
        counters["messages"] = result.messages
        counters["stored"] = result.stored
        counters["duplicates"] = result.duplicates
        counters["rows"] = result.rows
        counters["quarantined"] = result.quarantined
        counters["statuses"] = len(statuses)
        counters["command_acks"] = len(acks)
        conn.executemany(
            "INSERT INTO counters VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in counters.items() if v],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        state.forget()
        raise
    return result


class StoreWriter:
    """Owns the write connection; ``run()`` is the writer task. See the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max_rows: int = 4000,
        batch_max_ms: float = 5.0,
        synchronous: str = "full",
        quarantine_raw_bytes: int = 4096,
        queue_units: int = 10_000,
    ) -> None:
        self.path = path
        self._batch_rows = batch_max_rows
        self._batch_s = batch_max_ms / 1000
        self._synchronous = synchronous
        self._raw_limit = quarantine_raw_bytes
        self._queue: asyncio.Queue[Unit] = asyncio.Queue(queue_units)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="roost-store")
        self._state: _State | None = None
        self._listeners: list[Callable[[CommitResult], None]] = []
        self.commit_errors = 0
        self.transactions = 0

    async def open(self) -> None:
        """Open the database (creating it), set WAL and migrate: before ``run``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def _open() -> _State:
            conn = schema.connect(str(self.path), synchronous=self._synchronous)
            before = schema.migrate(conn)
            if before != schema.SCHEMA_VERSION:
                log.info("store %s: schema %d -> %d", self.path, before, schema.SCHEMA_VERSION)
            return _State(conn, self._raw_limit)

        self._state = await loop.run_in_executor(self._executor, _open)

    def add_listener(self, fn: Callable[[CommitResult], None]) -> None:
        """Call ``fn`` on the event loop after every commit (it must not block)."""
        self._listeners.append(fn)

    async def submit(self, unit: Unit) -> None:
        """Queue a unit; waits when the writer is this far behind (backpressure)."""
        await self._queue.put(unit)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """The writer task: batch, commit, then acknowledge. Cancel it to stop (see ``close``)."""
        assert self._state is not None, "open() first"
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            units = [await queue.get()]
            rows = units[0].rows
            deadline = loop.time() + self._batch_s
            while rows < self._batch_rows:
                if queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            unit = await queue.get()
                    except TimeoutError:
                        break
                else:
                    unit = queue.get_nowait()
                units.append(unit)
                rows += unit.rows
            await self._commit_with_retry(units)
            for _ in units:
                queue.task_done()

    async def drain(self) -> None:
        """Wait until every unit submitted so far is committed and acknowledged."""
        await self._queue.join()

    async def _commit_with_retry(self, units: list[Unit]) -> None:
        loop = asyncio.get_running_loop()
        state = self._state
        assert state is not None
        delay = 0.1
        while True:
            try:
                result = await loop.run_in_executor(self._executor, _commit, state, units)
                break
            except sqlite3.Error as exc:
                self.commit_errors += 1
                log.error(
                    "store commit failed (%s); %d units kept unacknowledged, retry in %.1fs",
                    exc,
                    len(units),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.transactions += 1
        for unit in units:
            if unit.on_commit is not None:
                unit.on_commit()
        for fn in self._listeners:
            try:
                fn(result)
            except Exception:
                log.exception("store listener failed")

    async def close(self) -> None:
        """Close the connection (after ``drain`` and cancelling ``run``)."""
        state = self._state
        self._state = None
        if state is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(self._executor, state.conn.close)
        self._executor.shutdown(wait=True)


def now_ms() -> int:
    """Epoch milliseconds: the gateway's receive time."""
    return time.time_ns() // 1_000_000

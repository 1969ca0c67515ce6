"""The store writer: the only owner of the SQLite write connection.

Ingest hands it ``Unit``s (the decoded content of one batch of MQTT messages plus a callback that
acknowledges them). The writer groups commits: a transaction takes every unit queued (up to
``batch_max_rows`` reading rows) and commits at once, unless the previous one started less than
``batch_max_ms`` ago (see ``run``). Only after the commit does it call each unit's callback: a
QoS1 PUBACK never leaves before its reading is on disk.

The connection lives on one dedicated thread and every transaction is one call of ``_execute``
on that thread (the unit-of-work model Datasette uses): one function and one thread hop instead
of a dozen awaits. The rows are planned on the event loop first (``gateway.store.plan``), where
the writer task alone owns the catalog of references, so the store thread spends its time inside
SQLite, which releases the GIL: ingest keeps decoding the next messages meanwhile. A failed
commit (disk full, I/O error) is rolled back, logged once, counted and retried with backoff; its
units are never acknowledged, so the broker keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec

from gateway.model import CommandAck, Message, NodeStatus, Rejected
from gateway.store import schema
from gateway.store.plan import (
    Catalog,
    Derived,
    Pending,
    Plan,
    StoredMessage,
    derive,
    plan,
    unknown_boots,
)

__all__ = ["CommitResult", "StoreWriter", "StoredMessage", "Unit", "now_ms"]

log = logging.getLogger("roost.store")

T = TypeVar("T")


@dataclass(slots=True)
class Unit:
    """What one inbound batch decoded to, and how to acknowledge it once committed."""

    items: Sequence[Message | NodeStatus | CommandAck | Rejected]
    received_ms: int
    publishes: int = 0
    on_commit: Callable[[], object] | None = None

    @property
    def rows(self) -> int:
        return sum(len(i.metrics) if isinstance(i, Message) else 1 for i in self.items)


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
    #: Every message this transaction stored, in commit order: read ``stored_messages()``.
    #: Built only when a listener asks (the live feed, with a client connected): one tuple per
    #: message was ~8 % of the event loop's time while draining a backlog (py-spy).
    committed: list[StoredMessage] | None = None
    inserted: Sequence[Pending] = ()
    #: Every reading message of the transaction, duplicates included (their identity is stored
    #: too): what the committed marks are built from (gateway/ingest/marks.py).
    planned: Sequence[Pending] = ()

    def stored_messages(self) -> list[StoredMessage]:
        """The messages this transaction stored, in commit order (built on first call)."""
        if self.committed is None:
            self.committed = [
                StoredMessage(
                    m.id,
                    m.message.node_id,
                    m.boot,
                    m.seq,
                    m.ts,
                    m.received,
                    m.flags,
                    m.message.metrics,
                )
                for m in self.inserted
            ]
        return self.committed


def _load_catalog(conn: sqlite3.Connection) -> Catalog:
    def one(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    return Catalog(
        nodes=dict(conn.execute("SELECT node_id, node_ref FROM nodes")),
        metrics=dict(conn.execute("SELECT name, metric_ref FROM metrics")),
        synthetic=dict(conn.execute("SELECT node_ref, synthetic_seq FROM nodes")),
        next_id=one("SELECT coalesce(max(id), 0) + 1 FROM messages"),
        next_node=one("SELECT coalesce(max(node_ref), 0) + 1 FROM nodes"),
        next_metric=one("SELECT coalesce(max(metric_ref), 0) + 1 FROM metrics"),
    )


def _load_boots(conn: sqlite3.Connection, cat: Catalog, pairs: set[tuple[str, int]]) -> None:
    for node_id, boot in pairs:
        ref = cat.nodes[node_id]
        row = conn.execute(
            "SELECT time_offset_ms FROM boots WHERE node_ref = ? AND boot = ?", (ref, boot)
        ).fetchone()
        if row is not None:
            cat.offsets[(ref, boot)] = row[0]


#: Rows bound into one multi-row INSERT statement (at most 999 parameters, the oldest SQLite
#: limit). ``executemany`` resets and steps its statement once per row and hands the GIL back and
#: forth around every step: for the messages and readings inserts that per-row overhead was
#: about half their cost. A 64-row statement halved it (bench: 4.1 -> 1.9 us of CPU per message
#: for both inserts), and SQLite then spends longer per step with the GIL released.
_ROWS_PER_STATEMENT = 64


@functools.lru_cache(maxsize=32)
def _values_sql(head: str, width: int, rows: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([one] * rows)}"


def _insert_rows(
    conn: sqlite3.Connection, head: str, width: int, rows: Sequence[tuple[object, ...]]
) -> int:
    """Run ``head VALUES (...), (...)`` over ``rows``; returns the rows changed.

    Full statements of ``_ROWS_PER_STATEMENT`` rows, then the rest one row per step (two
    statement texts, so the statement cache keeps both).
    """
    per = _ROWS_PER_STATEMENT
    n = len(rows)
    full = n - n % per
    changed = 0
    if full:
        flat = itertools.chain.from_iterable
        changed += conn.executemany(
            _values_sql(head, width, per),
            [tuple(flat(rows[i : i + per])) for i in range(0, full, per)],
        ).rowcount
    if full < n:
        changed += conn.executemany(_values_sql(head, width, 1), rows[full:]).rowcount
    return changed


# sqlite3 errors raised by the data of a transaction (a constraint, a value it cannot bind),
# not by the disk or the file: retrying them never helps, isolating the message does.
_DATA_ERRORS = (
    sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.InterfaceError,
)


def _rejected(item: Message | NodeStatus | CommandAck | Rejected, reason: str) -> Rejected:
    """The quarantine record of an item whose commit raised: the v1 topic of its node, its
    content as JSON (the decoded form: the raw bytes are not kept past decode), and the reason.
    Text is made encodable first: a lone surrogate in a name is one way such a commit fails."""

    def clean(text: str, limit: int) -> str:
        return text[:limit].encode("utf-8", "replace").decode("utf-8")

    if isinstance(item, Rejected):
        return Rejected(clean(item.topic, 1000), item.payload, clean(reason, 500),
                        None if item.node_id is None else clean(item.node_id, 200))
    kind = {Message: "readings", NodeStatus: "status", CommandAck: "cmd/ack"}[type(item)]
    try:
        payload = msgspec.json.encode(item)
    except Exception:  # keep the reason even if the item cannot be shown as JSON
        payload = repr(item).encode(errors="replace")
    node_id = clean(item.node_id, 200)
    return Rejected(f"roost/v1/{node_id}/{kind}", payload, clean(reason, 500), node_id)


def _execute(conn: sqlite3.Connection, p: Plan, derived: Derived, raw_limit: int) -> list[Pending]:
    """Run one planned transaction on the store thread; returns the messages inserted."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if p.new_nodes:
            conn.executemany(
                "INSERT INTO nodes (node_ref, node_id, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                p.new_nodes,
            )
        if p.new_metrics:
            conn.executemany("INSERT INTO metrics (metric_ref, name) VALUES (?, ?)", p.new_metrics)
        inserted = p.pending
        if inserted:
            rows = p.message_rows()
            changed = _insert_rows(
                conn,
                "INSERT OR IGNORE INTO messages "
                "(id, node_ref, boot, seq, ts, received, uptime_ms, flags)",
                8,
                rows,
            )
            if changed != len(rows):
                # Redeliveries: keep only the messages the unique identity let in.
                kept = {
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM messages WHERE id BETWEEN ? AND ?",
                        (rows[0][0], rows[-1][0]),
                    )
                }
                inserted = [m for m in p.pending if m.id in kept]
                derived = derive(inserted)
        if derived.readings:
            _insert_rows(conn, "INSERT INTO readings", 3, derived.readings)
            conn.executemany(
                "INSERT INTO latest (node_ref, metric_ref, ts, value, message_id) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_ref, metric_ref) DO UPDATE SET "
                "ts = excluded.ts, value = excluded.value, message_id = excluded.message_id "
                "WHERE excluded.ts >= latest.ts",
                derived.latest,
            )
        if derived.ledger:
            conn.executemany(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (node_ref, boot, hour) DO UPDATE SET "
                "min_seq = min(min_seq, excluded.min_seq), "
                "max_seq = max(max_seq, excluded.max_seq), "
                "received = received + excluded.received",
                derived.ledger,
            )
        if p.new_boots:
            conn.executemany(
                "INSERT OR IGNORE INTO boots (node_ref, boot, first_seen) VALUES (?, ?, ?)",
                p.new_boots,
            )
        if p.offsets:
            conn.executemany(
                "UPDATE boots SET time_offset_ms = ? WHERE node_ref = ? AND boot = ?",
                [(off, n, b) for (n, b), off in p.offsets.items()],
            )
        if p.node_seen:
            conn.executemany(
                "UPDATE nodes SET last_seen = max(last_seen, ?), synthetic_seq = ? "
                "WHERE node_ref = ?",
                [(t, p.synthetic.get(n, 0), n) for n, t in p.node_seen.items()],
            )
        for status, ref, at in p.statuses:
            conn.execute(
                "UPDATE nodes SET state = ?, state_at = ?, last_seen = max(last_seen, ?), "
                "fw = coalesce(?, fw), board = coalesce(?, board), boot = coalesce(?, boot), "
                "ip = coalesce(?, ip), rssi = coalesce(?, rssi), "
                "mem_free = coalesce(?, mem_free), dropped = coalesce(?, dropped) "
                "WHERE node_ref = ?",
                (
                    status.state,
                    at,
                    at,
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
        for ack, at in p.acks:
            conn.execute(
                "INSERT INTO commands (id, node_id, acked_at, ok, error) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET acked_at = excluded.acked_at, "
                "ok = excluded.ok, error = excluded.error",
                (ack.command_id, ack.node_id, at, int(ack.ok), ack.error),
            )
        if p.rejects:
            conn.executemany(
                "INSERT INTO quarantine (received, topic, node_id, reason, raw, raw_len) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        at,
                        r.topic[:1024],
                        r.node_id,
                        r.reason[:1024],
                        r.payload[:raw_limit],
                        len(r.payload),
                    )
                    for r, at in p.rejects
                ],
            )
        counters = {
            "publishes": p.publishes,
            "messages": len(p.pending),
            "stored": len(inserted),
            "duplicates": len(p.pending) - len(inserted),
            "rows": sum(len(m.values) for m in inserted),
            "quarantined": len(p.rejects),
            "statuses": len(p.statuses),
            "command_acks": len(p.acks),
        }
        conn.executemany(
            "INSERT INTO counters VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in counters.items() if v],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return inserted


class StoreWriter:
    """Owns the write connection; ``run()`` is the writer task. See the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max_rows: int = 4000,
        batch_max_ms: float = 3.0,
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
        self._conn: sqlite3.Connection | None = None
        self._catalog: Catalog | None = None
        self._listeners: list[Callable[[CommitResult], None]] = []
        self.commit_errors = 0
        #: Items quarantined because committing them raised (not a store fault).
        self.isolated = 0
        self.transactions = 0
        #: Units committed, and transactions that waited for the floor between commits (``run``).
        self.units = 0
        self.waits = 0
        self._last_start = -1e9
        # Awaited before each ingest commit: the disk budget holds commits (and so the
        # acknowledgements) here while the data dir is over budget (gateway/rollup/budget.py).
        self._gate: Callable[[], Awaitable[None]] | None = None

    def set_gate(self, gate: Callable[[], Awaitable[None]] | None) -> None:
        """Await ``gate()`` before every ingest commit (``execute`` jobs do not wait)."""
        self._gate = gate

    async def open(self) -> None:
        """Open the database (creating it), set WAL and migrate: before ``run``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def _open() -> tuple[sqlite3.Connection, Catalog]:
            conn = schema.connect(str(self.path), synchronous=self._synchronous)
            before = schema.migrate(conn)
            if before != schema.SCHEMA_VERSION:
                log.info("store %s: schema %d -> %d", self.path, before, schema.SCHEMA_VERSION)
            return conn, _load_catalog(conn)

        self._conn, self._catalog = await loop.run_in_executor(self._executor, _open)

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
        """The writer task: batch, commit, then acknowledge. Cancel it to stop (see ``close``).

        Group commit with a floor between commits: a transaction takes the first unit and
        everything queued behind it (up to ``batch_max_rows``). If the previous transaction
        started at least ``batch_max_ms`` ago it commits at once, otherwise it goes on
        gathering until then. So an idle or quiet gateway commits each unit without waiting,
        what arrives during a commit forms the next transaction (transactions grow by
        themselves when the store is the bottleneck), and a steady stream is committed at most
        once per ``batch_max_ms``: every commit costs a WAL sync and a few pages written
        whatever its size (SD-card wear; docs/performance.md), and the wait is the only
        latency this adds.
        """
        assert self._conn is not None, "open() first"
        loop = asyncio.get_running_loop()
        queue = self._queue
        limit = self._batch_rows
        while True:
            units = [await queue.get()]
            rows = units[0].rows
            while rows < limit and not queue.empty():
                unit = queue.get_nowait()
                units.append(unit)
                rows += unit.rows
            wait = self._last_start + self._batch_s - loop.time()
            if wait > 0 and rows < limit:
                self.waits += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        while rows < limit:
                            unit = await queue.get()
                            units.append(unit)
                            rows += unit.rows
            if self._gate is not None:
                await self._gate()
            self._last_start = loop.time()
            await self._commit_with_retry(units)
            for _ in units:
                queue.task_done()

    async def drain(self) -> None:
        """Wait until every unit submitted so far is committed and acknowledged."""
        await self._queue.join()

    async def _commit_with_retry(self, units: list[Unit]) -> None:
        """Commit ``units`` in one transaction, retrying store faults until they pass.

        Only a store fault (a ``sqlite3.Error`` other than ``_DATA_ERRORS``: disk, I/O, a locked
        or corrupt file) pauses ingest: the units stay unacknowledged and the commit is retried
        with backoff. Any other exception comes from something these units contain that nobody
        planned for, so the batch is redone one item at a time and the item that raises is
        quarantined with the exception as its reason: one message can never stop the writer.
        """
        try:
            result = await self._commit_retrying(units)
        except Exception as exc:  # isolated below; store faults never get here
            result = None
            await self._reload_catalog()
            log.warning(
                "store commit raised %s: %s; committing its %d units one message at a time",
                type(exc).__name__, exc, len(units),
            )
            for unit in units:
                publishes = unit.publishes
                for item in unit.items:
                    one = Unit([item], unit.received_ms, publishes)
                    publishes = 0
                    try:
                        self._finish(await self._commit_retrying([one]))
                    except Exception as err:  # this item is the culprit
                        self.isolated += 1
                        await self._reload_catalog()
                        bad = _rejected(item, f"ingest failed: {type(err).__name__}: {err}")
                        self._finish(
                            await self._commit_retrying([Unit([bad], unit.received_ms)])
                        )
        self.transactions += 1
        self.units += len(units)
        for unit in units:
            if unit.on_commit is not None:
                unit.on_commit()
        if result is not None:
            self._finish(result)

    async def _reload_catalog(self) -> None:
        # A failed plan may have advanced the catalog for rows that were rolled back.
        loop = asyncio.get_running_loop()
        conn = self._conn
        assert conn is not None
        with contextlib.suppress(sqlite3.Error):
            self._catalog = await loop.run_in_executor(self._executor, _load_catalog, conn)

    async def _commit_retrying(self, units: list[Unit]) -> CommitResult:
        """One transaction for ``units``; a store fault is retried with backoff, anything else
        propagates (nothing of it was committed)."""
        loop = asyncio.get_running_loop()
        conn = self._conn
        assert conn is not None and self._catalog is not None
        delay = 0.1
        while True:
            cat = self._catalog
            try:
                boots = unknown_boots(cat, (i for u in units for i in u.items))
                if boots:
                    await loop.run_in_executor(self._executor, _load_boots, conn, cat, boots)
                p = plan(cat, ((u.items, u.received_ms, u.publishes) for u in units))
                derived = derive(p.pending)
                inserted = await loop.run_in_executor(
                    self._executor, _execute, conn, p, derived, self._raw_limit
                )
                break
            except _DATA_ERRORS:
                raise  # what the units hold, not the store: the caller isolates the culprit
            except sqlite3.Error as exc:
                self.commit_errors += 1
                log.error(
                    "store commit failed (%s); %d units kept unacknowledged, retry in %.1fs",
                    exc,
                    len(units),
                    delay,
                )
                await self._reload_catalog()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        return CommitResult(
            messages=len(p.pending),
            stored=len(inserted),
            duplicates=len(p.pending) - len(inserted),
            rows=sum(len(m.values) for m in inserted),
            quarantined=len(p.rejects),
            statuses=[s for s, _, _ in p.statuses],
            untimed_nodes=p.untimed_nodes,
            inserted=inserted,
            planned=p.pending,
        )

    def _finish(self, result: CommitResult) -> None:
        for fn in self._listeners:
            try:
                fn(result)
            except Exception:
                log.exception("store listener failed")

    async def execute(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job(conn)`` on the store thread inside one ``BEGIN IMMEDIATE`` transaction.

        The way for other parts of the gateway (rollup catalog, retention, command records) to
        write: serialised with ingest's commits on the one connection, committed when ``job``
        returns, rolled back when it raises. ``job`` must not touch the tables the ingest
        catalog caches in a way that changes references (nodes, metrics, message ids).
        """
        conn = self._conn
        assert conn is not None, "open() first"

        def run() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = job(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return out

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def close(self) -> None:
        """Close the connection (after ``drain`` and cancelling ``run``)."""
        conn = self._conn
        self._conn = None
        if conn is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)


def now_ms() -> int:
    """Epoch milliseconds: the gateway's receive time."""
    return time.time_ns() // 1_000_000

"""One runner per sink instance: outbox -> sink, cursor advanced only after the target acked.

The loop: take the next batch after the cursor, wait for the rate limit, ``sink.write`` it,
then record in one store transaction the new cursor, the dead letters and the sink's state.
A ``SinkUnavailable`` keeps the batch and backs off exponentially with jitter (cap:
``backoff_max_s``); the same batch is written again once the link is back. A crash between the
target's ack and the cursor commit resends that one batch: duplicates are bounded by
``batch_size`` per crash, and each record carries (node_id, boot, seq) for the cloud to drop them.

Backlog and live data: with ``live_share`` > 0 and a backlog of more than two batches, the
runner freezes the current head (``live_from``) and interleaves batches of newer messages (a
second cursor, ``live_cursor``) with the backlog's, so the cloud sees current values while the
backlog drains. Each stream is in order; when the backlog reaches ``live_from`` the two merge.
The low-water cursor (everything up to it delivered) is what retention may delete below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import MqttSinkSettings, SinkSettings
from gateway.store.writer import CommitResult, StoreWriter, now_ms
from gateway.sync.outbox import Outbox
from gateway.sync.ratelimit import TokenBucket
from gateway.sync.sink import Outgoing, Refused, Sink, SinkUnavailable, encode

__all__ = ["SinkRunner", "SinkState", "load_cursor", "lowest_delivered"]

log = logging.getLogger("roost.sync")


@dataclass(slots=True)
class SinkState:
    """What the API, metrics and ``roost stats`` show of one sink."""

    name: str
    type: str
    state: str = "starting"  # starting | online | backoff | disabled
    last_error: str | None = None
    cursor: int = 0
    live_from: int | None = None
    live_cursor: int | None = None
    delivered: int = 0
    dead_letters: int = 0
    backlog: int = 0
    oldest_undelivered_ms: int | None = None
    rate: float = 0.0


def load_cursor(
    conn: sqlite3.Connection, name: str
) -> tuple[int, int | None, int | None, int, int]:
    row = conn.execute(
        "SELECT cursor, live_from, live_cursor, delivered, dead_letters FROM sink_cursors "
        "WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return 0, None, None, 0, 0
    return int(row[0]), row[1], row[2], int(row[3]), int(row[4])


def lowest_delivered(conn: sqlite3.Connection, sinks: list[str]) -> int | None:
    """The retention hook: every ``messages.id`` up to this was delivered by all these sinks.

    ``None`` when there are no enabled sinks (nothing to wait for); 0 when one of them has not
    delivered anything yet (or has no cursor row: a sink added since, which starts from 0).
    """
    if not sinks:
        return None
    cursors = dict(conn.execute("SELECT name, cursor FROM sink_cursors"))
    return min(int(cursors.get(name, 0)) for name in sinks)


class SinkRunner:
    """Drives one sink; ``run()`` is its task."""

    def __init__(
        self, settings: SinkSettings, sink: Sink, writer: StoreWriter, outbox: Outbox, gateway: str
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.sink = sink
        self.writer = writer
        self.outbox = outbox
        kind = "mqtt" if isinstance(settings, MqttSinkSettings) else "kafka"
        self.state = SinkState(settings.name, kind)
        self._wake = asyncio.Event()
        self._readings = TokenBucket(settings.rate_limit_rps)
        self._bytes = TokenBucket(settings.rate_limit_bps)
        self._live_turn = 0.0
        self._strikes: dict[tuple[int, int], int] = {}
        self._single_strikes: dict[int, int] = {}
        self._probe_until = 0
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._pending: asyncio.Task[None] | None = None
        self._prefetch: tuple[int, asyncio.Task[list[Outgoing]]] | None = None
        writer.add_listener(self._on_commit)

    def stop(self) -> None:
        """Finish the batch in flight (record its cursor), then return from ``run``."""
        self._stopping = True
        self._wake.set()
        self._stop_event.set()

    def _on_commit(self, result: CommitResult) -> None:
        if result.stored:
            self._wake.set()

    async def run(self) -> None:
        s = self.settings
        st = self.state
        (
            st.cursor,
            st.live_from,
            st.live_cursor,
            st.delivered,
            st.dead_letters,
        ) = await self.writer.execute(lambda conn: load_cursor(conn, s.name))
        await self._save()
        failures = 0
        connected = False
        try:
            while not self._stopping:
                if not connected:
                    try:
                        await self.sink.connect()
                    except SinkUnavailable as exc:
                        failures += 1
                        await self._backoff(str(exc), failures)
                        continue
                    connected = True
                    failures = 0
                    self._set_state("online", None)
                batch, live = await self._next_batch()
                if not batch:
                    if self._stopping:
                        break
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5.0):
                            await self._wake.wait()
                    await self._refresh_backlog()
                    continue
                await self._readings.take(len(batch))
                if s.rate_limit_bps:
                    await self._bytes.take(sum(len(encode(self.gateway, m)) for m in batch))
                started = time.monotonic()
                poison = self._poisoned(batch)
                if not live and not poison and st.live_from is None:
                    # Read the next batch from the store while this one is on the wire.
                    self._prefetch = (
                        batch[-1].id,
                        asyncio.create_task(self.outbox.batch(batch[-1].id, self._size())),
                    )
                try:
                    refused = [poison] if poison else await self.sink.write(batch)
                except SinkUnavailable as exc:
                    self._drop_prefetch()
                    connected = False
                    with contextlib.suppress(Exception):
                        await self.sink.close()
                    failures += 1
                    self._strike(batch)
                    await self._backoff(str(exc), failures)
                    continue
                self._strikes.clear()
                self._single_strikes.pop(batch[0].id, None)
                # Record the cursor while the next batch goes out: commits stay in order (each
                # waits for the one before), and each follows its batch's acknowledgement.
                job = self._record(batch, refused, live)
                if self._pending is not None:
                    await self._pending
                self._pending = asyncio.create_task(self.writer.execute(job))
                elapsed = max(time.monotonic() - started, 1e-6)
                st.rate = (
                    0.8 * st.rate + 0.2 * (len(batch) / elapsed)
                    if st.rate
                    else len(batch) / elapsed
                )
        finally:
            self._drop_prefetch()
            if self._pending is not None:
                try:
                    await self._pending
                except sqlite3.Error as exc:
                    log.error(
                        "sink %s: cursor not recorded (%s); that batch will be resent", s.name, exc
                    )
            with contextlib.suppress(Exception):
                await self.sink.close()

    def _size(self) -> int:
        s = self.settings
        if self.state.cursor < self._probe_until:
            return 1  # isolate the message that breaks the link
        if s.rate_limit_rps:
            return max(1, min(s.batch_size, int(s.rate_limit_rps)))
        return s.batch_size

    def _drop_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch[1].cancel()
            self._prefetch = None

    # A broker may drop the connection instead of refusing one message (mosquitto 2.0.11 does so
    # over TLS for a publish its ACL denies). Without care that one message would block the sink
    # for ever: after STRIKES drops on the same batch, batches shrink to one message, and a
    # message that drops the link STRIKES times on its own goes to dead letters.
    STRIKES = 3

    def _strike(self, batch: list[Outgoing]) -> None:
        if len(batch) == 1:
            key = batch[0].id
            self._single_strikes[key] = self._single_strikes.get(key, 0) + 1
            return
        span = (batch[0].id, batch[-1].id)
        self._strikes[span] = self._strikes.get(span, 0) + 1
        if self._strikes[span] >= self.STRIKES:
            self._probe_until = max(self._probe_until, span[1])

    def _poisoned(self, batch: list[Outgoing]) -> Refused | None:
        if len(batch) == 1 and self._single_strikes.get(batch[0].id, 0) >= self.STRIKES:
            self._single_strikes.pop(batch[0].id)
            return Refused(
                batch[0],
                f"the target dropped the connection {self.STRIKES} times on this message alone",
            )
        return None

    async def _next_batch(self) -> tuple[list[Outgoing], bool]:
        s, st = self.settings, self.state
        size = self._size()
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            after, task = prefetch
            if after == st.cursor and st.live_from is None and size == s.batch_size:
                with contextlib.suppress(sqlite3.Error):
                    return await task, False
            else:
                task.cancel()
        if s.live_share > 0:
            head = await self.outbox.max_id()
            if st.live_from is None and head - st.cursor > 2 * size:
                st.live_from = st.live_cursor = head
                log.info(
                    "sink %s: backlog of %d messages; live data interleaved from id %d",
                    s.name,
                    head - st.cursor,
                    head,
                )
            if st.live_from is not None:
                self._live_turn += s.live_share
                if self._live_turn >= 1.0 and st.live_cursor is not None:
                    live = await self.outbox.batch(st.live_cursor, size)
                    if live:
                        self._live_turn -= 1.0
                        return live, True
                return await self.outbox.batch(st.cursor, size, upto=st.live_from), False
        return await self.outbox.batch(st.cursor, size), False

    def _record(
        self, batch: list[Outgoing], refused: list[Refused], live: bool
    ) -> Callable[[sqlite3.Connection], None]:
        """Advance the cursors in memory; return the store job that records them."""
        st = self.state
        if live:
            st.live_cursor = batch[-1].id
        else:
            st.cursor = batch[-1].id
            if st.live_from is not None and st.cursor >= st.live_from:
                st.cursor = max(st.cursor, st.live_cursor or 0)
                st.live_from = st.live_cursor = None
                log.info(
                    "sink %s: backlog drained; one stream again from id %d",
                    self.settings.name,
                    st.cursor,
                )
        st.delivered += len(batch) - len(refused)
        st.dead_letters += len(refused)
        for r in refused:
            log.warning(
                "sink %s: message %s/%d/%d refused for good: %s",
                self.settings.name,
                r.message.node_id,
                r.message.boot,
                r.message.seq,
                r.reason,
            )
        gateway = self.gateway
        dead = [
            (
                self.settings.name,
                r.message.id,
                r.message.node_id,
                r.message.boot,
                r.message.seq,
                encode(gateway, r.message),
                r.reason[:1024],
                now_ms(),
            )
            for r in refused
        ]

        def job(conn: sqlite3.Connection) -> None:
            if dead:
                conn.executemany(
                    "INSERT INTO dead_letters (sink, message_id, node_id, boot, seq, payload, "
                    "reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    dead,
                )
            self._upsert(conn, snapshot)

        snapshot = self._snapshot()
        return job

    def _snapshot(self) -> tuple[object, ...]:
        st = self.state
        return (
            st.name,
            st.type,
            st.cursor,
            st.live_from,
            st.live_cursor,
            st.delivered,
            st.dead_letters,
            st.state,
            st.last_error,
            now_ms(),
        )

    def _upsert(self, conn: sqlite3.Connection, snapshot: tuple[object, ...] | None = None) -> None:
        conn.execute(
            "INSERT INTO sink_cursors (name, type, cursor, live_from, live_cursor, delivered, "
            "dead_letters, state, last_error, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET type = excluded.type, cursor = excluded.cursor, "
            "live_from = excluded.live_from, live_cursor = excluded.live_cursor, "
            "delivered = excluded.delivered, dead_letters = excluded.dead_letters, "
            "state = excluded.state, last_error = excluded.last_error, updated = excluded.updated",
            snapshot or self._snapshot(),
        )

    async def _save(self) -> None:
        await self.writer.execute(self._upsert)

    def _set_state(self, state: str, error: str | None) -> None:
        if state != self.state.state or error != self.state.last_error:
            if state == "online":
                log.info("sink %s online", self.settings.name)
            self.state.state = state
            self.state.last_error = error

    async def _backoff(self, error: str, failures: int) -> None:
        cap = self.settings.backoff_max_s
        delay = min(cap, 0.5 * 2 ** min(failures - 1, 16)) * (0.5 + random.random() / 2)
        if self.state.state != "backoff" or self.state.last_error != error:
            log.warning(
                "sink %s unavailable: %s; retrying in %.1fs", self.settings.name, error, delay
            )
        self._set_state("backoff", error)
        with contextlib.suppress(sqlite3.Error):
            await self._save()
        await self._refresh_backlog()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop_event.wait()

    async def _refresh_backlog(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            count, oldest = await self.outbox.backlog(self.state.cursor)
            self.state.backlog = count
            self.state.oldest_undelivered_ms = oldest

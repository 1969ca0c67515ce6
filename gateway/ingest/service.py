"""Ingest: the gateway's persistent MQTT session, from broker to store writer.

One connection (fixed client id, no clean start, a session expiry) so the broker queues QoS1
messages while the gateway is down. Each batch the connection hands over is decoded and submitted
to the store writer as one ``Unit`` whose callback PUBACKs the batch after it commits. The
connection's own read pause bounds what waits for a commit.

Reconnection is this plain loop with exponential backoff and jitter. Nodes that come online or
send readings without a clock get the gateway's time (the ``time`` command), at most once a
minute each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from gateway import failpoints
from gateway.config import MqttTarget, Settings
from gateway.ingest.decode import ROOT, Decoder
from gateway.ingest.marks import Marks
from gateway.ingest.poison import PoisonGuard
from gateway.model import Rejected
from gateway.mqtt import wire
from gateway.mqtt.client import Connection, ConnectOptions, ConnectRefused, MqttError, tls_context
from gateway.store.plan import Item
from gateway.store.writer import CommitResult, StoreWriter, Unit, now_ms

__all__ = ["Ingest", "IngestState"]

log = logging.getLogger("roost.ingest")


@dataclass(slots=True)
class IngestState:
    """What the API and logs report about ingest."""

    connected: bool = False
    since: float = 0.0
    last_error: str | None = None
    connects: int = 0
    publishes: int = 0


class _RateLimitedLog:
    """At most ``burst`` lines per ``window`` seconds; the rest are counted and summarised."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst = burst
        self.window = window
        self.start = 0.0
        self.count = 0
        self.suppressed = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.start > self.window:
            if self.suppressed:
                log.warning("%d more quarantined messages were not logged", self.suppressed)
            self.start, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count <= self.burst:
            log.warning(msg, *args)
        else:
            self.suppressed += 1


class Ingest:
    """Owns the ingest connection; ``run()`` is its task."""

    def __init__(self, settings: Settings, writer: StoreWriter, target: MqttTarget) -> None:
        self.settings = settings
        self.writer = writer
        self.target = target
        self.state = IngestState()
        self.decoder = Decoder(
            settings.mapping_rules(),
            max_payload_bytes=settings.ingest.max_payload_bytes,
            node_id_pattern=settings.ingest.node_id_pattern,
        )
        rules = settings.mapping_rules()
        self.filters: list[tuple[str, int]] = [(ROOT + "#", 1)] + [
            (r.subscription, 1) for r in rules
        ]
        self._conn: Connection | None = None
        self._warn = _RateLimitedLog()
        self._synced: dict[str, float] = {}
        self._cmd_seq = 0
        self._tasks: set[asyncio.Future[object]] = set()
        self._stopping = False
        writer.add_listener(self._after_commit)
        #: Committed marks to v1 nodes (docs/mqtt.md, "End-to-end acknowledgement").
        self.marks = Marks()
        writer.add_listener(self.marks.after_commit)
        #: The poison-message breaker (gateway/ingest/poison.py).
        self.poison = PoisonGuard(writer, settings.ingest.poison_after)

    def _options(self) -> ConnectOptions:
        m = self.settings.mqtt
        return ConnectOptions(
            host=self.target.host,
            port=self.target.port,
            client_id=m.client_id,
            clean_start=False,
            session_expiry=m.session_expiry_s,
            keepalive=m.keepalive_s,
            username=self.target.username,
            password=self.target.password,
            ssl=tls_context(m.ca_file, insecure=m.tls_insecure) if self.target.tls else None,
            will=wire.Will(
                f"roost/gateway/{self.settings.gateway.name}/status", b'{"state":"offline"}'
            ),
        )

    async def run(self) -> None:
        """Connect, subscribe, pump; reconnect with backoff when the link drops."""
        delay = 0.5
        options = self._options()
        await self.poison.begin()
        while not self._stopping:
            try:
                conn = await Connection.open(options, max_pending=self.settings.ingest.max_pending)
            except ConnectRefused as exc:
                self._down(str(exc))
                await asyncio.sleep(min(delay * 8, 60.0))
                continue
            except MqttError as exc:
                self._down(str(exc))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            self._conn = conn
            try:
                await self._serve(conn)
            except MqttError as exc:
                self._down(str(exc))
            finally:
                self._conn = None
                self.poison.done_careful()  # a new connection's redeliveries are not suspects
                if not self._stopping:
                    await conn.close()

    def _down(self, why: str) -> None:
        if self.state.connected or self.state.last_error != why:
            log.warning("broker link down: %s", why)
        self.state.connected = False
        self.state.last_error = why

    async def _serve(self, conn: Connection) -> None:
        self.state.connected = True
        self.state.since = time.time()
        self.state.connects += 1
        self.state.last_error = None
        log.info(
            "connected to broker %s:%d as %r (session %s)",
            self.target.host,
            self.target.port,
            self.settings.mqtt.client_id,
            "resumed" if conn.session_present else "new",
        )
        # A resumed session starts delivering its backlog at once, before any SUBACK: the pump
        # must already be running or the read pause would hide the SUBACK from us for good.
        self._spawn(self._subscribe(conn))
        self._spawn(self._publish_gateway_status(conn))
        self.marks.start(conn)
        decode_one = self._decode_one
        writer = self.writer
        # Units of a bounded size: the writer commits one while the next is decoded, and a
        # backlog arriving in one socket read does not become one huge transaction.
        chunk = max(1, self.settings.store.batch_max_rows // 4)
        while True:
            received_batch = await conn.messages()
            received = now_ms()
            if self.poison.careful:
                # After a run that died: what the broker redelivers comes first, and one of
                # those messages may be what killed it. One at a time, each charged first.
                n = 0
                while n < len(received_batch) and received_batch[n].dup:
                    await self._handle_carefully(conn, received_batch[n], received)
                    n += 1
                if n < len(received_batch):
                    self.poison.done_careful()
                received_batch = received_batch[n:]
            for start in range(0, len(received_batch), chunk):
                batch = received_batch[start : start + chunk]
                items = []
                mids = []
                for p in batch:
                    items.extend(decode_one(p))
                    if p.qos:
                        mids.append(p.mid)
                self.state.publishes += len(batch)
                await writer.submit(
                    Unit(items, received, publishes=len(batch), on_commit=partial(conn.ack, mids))
                )

    def _decode_one(self, p: wire.Publish) -> list[Item]:
        if failpoints.KILL_ON is not None:  # tests only (gateway/failpoints.py)
            failpoints.maybe_die(p.payload)
        decoded = self.decoder.decode(p.topic, p.payload)
        # One line per message, not per element: an array of 5,000 bad elements logged 20
        # lines in a burst and hid every other node's problems.
        bad = [d for d in decoded if isinstance(d, Rejected)]
        if len(bad) == 1:
            self._warn("quarantined message on %s: %s", bad[0].topic[:200], bad[0].reason)
        elif bad:
            self._warn(
                "quarantined %d of %d elements of a message on %s, first reason: %s",
                len(bad),
                len(decoded),
                bad[0].topic[:200],
                bad[0].reason,
            )
        return decoded

    async def _handle_carefully(self, conn: Connection, p: wire.Publish, received: int) -> None:
        """Handle one redelivered message alone, charged a death first (gateway/ingest/poison)."""
        fp, verdict = await self.poison.charge(p.topic, p.payload)
        items: list[Item] = [verdict] if verdict is not None else self._decode_one(p)
        committed = asyncio.Event()

        def ack() -> None:
            if p.qos:
                conn.ack([p.mid])
            committed.set()

        self.state.publishes += 1
        await self.writer.submit(Unit(items, received, publishes=1, on_commit=ack))
        await committed.wait()
        await self.poison.handled(fp)

    async def _subscribe(self, conn: Connection) -> None:
        try:
            granted = await conn.subscribe(self.filters)
        except MqttError:
            return  # the pump sees the same failure and reconnects
        for (topic, _), code in zip(self.filters, granted, strict=False):
            if code >= 0x80:
                log.error("broker refused subscription %r (reason 0x%02x)", topic, code)

    async def _publish_gateway_status(self, conn: Connection) -> None:
        payload = msgspec.json.encode({"state": "online", "ts": now_ms()})
        with contextlib.suppress(MqttError):
            await conn.publish(
                f"roost/gateway/{self.settings.gateway.name}/status", payload, qos=1, retain=True
            )

    def _after_commit(self, result: CommitResult) -> None:
        if not self.settings.ingest.time_sync:
            return
        now = time.monotonic()
        due = {s.node_id for s in result.statuses if s.state == "online"}
        due.update(result.untimed_nodes)
        for node_id in due:
            if now - self._synced.get(node_id, -1e9) < 60.0:
                continue
            self._synced[node_id] = now
            self._spawn(self.send_command(node_id, {"op": "time", "epoch_ms": now_ms()}))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_command(self, node_id: str, body: dict[str, object]) -> str | None:
        """Publish a command on the node's cmd topic; its id, or ``None`` when offline."""
        conn = self._conn
        if conn is None or conn.closed:
            return None
        self._cmd_seq += 1
        cid = f"g{int(time.time())}-{self._cmd_seq}"
        payload = msgspec.json.encode({"id": cid, **body})
        try:
            async with asyncio.timeout(10):
                await conn.publish(f"{ROOT}{node_id}/cmd", payload, qos=1)
        except (MqttError, TimeoutError) as exc:
            log.info("command %s to %s not sent: %s", body.get("op"), node_id, exc)
            return None
        return cid

    async def stop(self) -> None:
        """Stop reading; the writer then commits and acks what was already handed over."""
        self._stopping = True

    async def disconnect(self) -> None:
        """Send DISCONNECT after the writer drained: the broker keeps our session."""
        for task in list(self._tasks):
            task.cancel()
        self.marks.stop()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(MqttError):
                await conn.publish(
                    f"roost/gateway/{self.settings.gateway.name}/status",
                    b'{"state":"offline"}',
                    qos=0,
                    retain=True,
                )
            await conn.close()

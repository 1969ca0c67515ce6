"""One MQTT 5 connection on an asyncio Protocol, built for an ingest that acks after commit.

Why not gmqtt here: gmqtt can delay a PUBACK (MQTT 5, ``optimistic_acknowledgement=False`` and an
async handler returning 0), but it schedules one task per message and parses in Python per
packet; the benchmark (docs/performance.md) shows that layer alone near the target rate before any
commit work. This connection hands the reader whole batches of messages, sends PUBACKs for a
committed batch in one write, and stops reading the socket while too many messages wait for their
commit, which bounds memory even when the broker ignores our receive maximum (mosquitto 2.0
does once acks flow). gmqtt remains the client for the gateway's outgoing connections.

A connection does not reconnect: the service that owns it runs a plain loop with backoff
(``gateway.ingest.service``). Errors surface as ``MqttError`` subclasses, never library types.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.mqtt import wire

__all__ = [
    "ConnectOptions",
    "ConnectRefused",
    "Connection",
    "ConnectionLost",
    "MqttError",
    "PublishRejected",
    "tls_context",
]


class MqttError(Exception):
    """Base of every error this module raises.

    MqttError
    ├── ConnectRefused   the broker answered CONNECT with a failure reason code
    ├── ConnectionLost   the link died (socket error, protocol error, keepalive timeout)
    └── PublishRejected  the broker refused one QoS1 message (reason code >= 0x80)
    """


class ConnectRefused(MqttError):
    def __init__(self, reason: int) -> None:
        hint = {
            0x86: "bad user name or password",
            0x87: "not authorized",
            0x85: "client identifier not valid",
            0x84: "unsupported protocol version",
        }.get(reason, "see the broker's log")
        super().__init__(f"broker refused the connection (reason 0x{reason:02x}: {hint})")
        self.reason = reason


class ConnectionLost(MqttError):
    pass


class PublishRejected(MqttError):
    """The broker answered a QoS1 PUBLISH with a failure reason code (MQTT 5)."""

    def __init__(self, topic: str, reason: int) -> None:
        super().__init__(f"broker rejected the publish to {topic!r} (reason 0x{reason:02x})")
        self.topic = topic
        self.reason = reason


def tls_context(
    ca_file: str = "", *, insecure: bool = False, cert_file: str = "", key_file: str = ""
) -> ssl.SSLContext:
    """A client TLS context: the broker's certificate verified against the system CAs (or
    ``ca_file``) unless ``insecure``; ``cert_file``/``key_file`` add a client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Everything one connection needs; ``ssl`` is a ready context for mqtts, else ``None``."""

    host: str
    port: int
    client_id: str
    clean_start: bool = False
    session_expiry: int = 3600
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    will: wire.Will | None = None
    ssl: ssl.SSLContext | None = None
    receive_maximum: int = 65535
    connect_timeout: float = 10.0


_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # 0: not on this platform


def _quickack_socket(transport: asyncio.Transport) -> socket.socket | None:
    """The transport's TCP socket where the platform has TCP_QUICKACK (Linux), else None."""
    sock = transport.get_extra_info("socket")
    if not _TCP_QUICKACK or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock  # type: ignore[no-any-return]


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: Connection) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_lost(exc)

    def pause_writing(self) -> None:
        self.owner._writable.clear()

    def resume_writing(self) -> None:
        self.owner._writable.set()


class Connection:
    """An open MQTT 5 connection. Create with ``await Connection.open(options)``."""

    def __init__(self, options: ConnectOptions, max_pending: int) -> None:
        self.options = options
        self.session_present = False
        self._max_pending = max_pending
        self._parser = wire.PacketParser()
        self._transport: asyncio.Transport | None = None
        self._inbox: list[wire.Publish] = []
        self._inbox_ready = asyncio.Event()
        self._unacked = 0
        self._paused = False
        self._closed = False
        self._close_exc: MqttError | None = None
        self._connack: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._suback: dict[int, bytes] = {}
        self._next_mid = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self._last_rx = 0.0
        self._keepalive_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._quickack: socket.socket | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, options: ConnectOptions, *, max_pending: int = 50_000) -> Connection:
        """Connect, send CONNECT and wait for a successful CONNACK."""
        loop = asyncio.get_running_loop()
        conn = cls(options, max_pending)
        try:
            async with asyncio.timeout(options.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(conn),
                    options.host,
                    options.port,
                    ssl=options.ssl,
                    server_hostname=options.host if options.ssl else None,
                )
                conn._transport = transport
                conn._last_rx = loop.time()
                conn._quickack = _quickack_socket(transport)
                transport.write(
                    wire.encode_connect(
                        options.client_id,
                        keepalive=options.keepalive,
                        clean_start=options.clean_start,
                        session_expiry=options.session_expiry,
                        receive_maximum=options.receive_maximum,
                        username=options.username,
                        password=options.password,
                        will=options.will,
                    )
                )
                present, reason = await conn._connack
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            conn._abort()
            raise ConnectionLost(
                f"cannot connect to {options.host}:{options.port}: {exc or 'timed out'}"
            ) from None
        except MqttError:
            conn._abort()
            raise
        if reason >= 0x80:
            conn._abort()
            raise ConnectRefused(reason)
        conn.session_present = present
        conn._keepalive_task = asyncio.create_task(conn._keepalive(), name="mqtt-keepalive")
        return conn

    async def close(self) -> None:
        """Send DISCONNECT (the broker keeps the session, drops the will) and close."""
        if self._transport is not None and not self._closed:
            self._transport.write(wire.encode_disconnect())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._drain()
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._done.wait()
        self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._mark_closed(ConnectionLost("connection closed"))

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> MqttError:
        """Wait until the link is gone; returns why."""
        await self._done.wait()
        assert self._close_exc is not None
        return self._close_exc

    # --- subscribing and receiving ---------------------------------------------------------

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe and return the granted reason codes (>= 0x80 means refused)."""
        mid = self._mid()
        fut = self._expect(mid)
        self._write(wire.encode_subscribe(mid, filters))
        await fut
        return list(self._suback.pop(mid))

    async def messages(self) -> list[wire.Publish]:
        """The next batch of inbound messages (at least one). Raises ``ConnectionLost``."""
        while not self._inbox:
            if self._closed:
                assert self._close_exc is not None
                raise self._close_exc
            self._inbox_ready.clear()
            await self._inbox_ready.wait()
        batch = self._inbox
        self._inbox = []
        return batch

    def ack(self, mids: Iterable[int]) -> int:
        """PUBACK these messages in one write; a no-op once the connection is gone.

        Returns how many acks were written. After a reconnect the broker redelivers what this
        connection received but did not ack: acking an old packet id on a new connection would
        acknowledge the wrong message, so acks never cross connections.
        """
        if self._closed or self._transport is None:
            return 0
        pack = wire.encode_puback
        data = b"".join([pack(m) for m in mids])
        count = len(data) // 4
        if count:
            self._transport.write(data)
            self._unacked -= count
            if self._paused and self._unacked + len(self._inbox) <= self._max_pending // 2:
                self._paused = False
                self._transport.resume_reading()
        return count

    @property
    def unacked(self) -> int:
        return self._unacked

    # --- publishing ------------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish; for QoS 1 wait for the broker's PUBACK."""
        if qos == 0:
            self._write(wire.encode_publish(topic, payload, retain=retain))
            return
        mid = self._mid()
        fut = self._expect(mid)
        self._write(wire.encode_publish(topic, payload, qos=1, mid=mid, retain=retain))
        reason = await fut
        if reason >= 0x80:
            raise PublishRejected(topic, reason)

    async def _drain(self) -> None:
        await self._writable.wait()

    # --- internals -------------------------------------------------------------------------

    def _mid(self) -> int:
        for _ in range(65535):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._waiters:
                return self._next_mid
        raise MqttError("no free packet identifier: 65535 publishes in flight")

    def _expect(self, mid: int) -> asyncio.Future[int]:
        if self._closed:
            assert self._close_exc is not None
            raise self._close_exc
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[mid] = fut
        return fut

    def _write(self, data: bytes) -> None:
        if self._closed or self._transport is None:
            assert self._close_exc is not None
            raise self._close_exc
        self._transport.write(data)

    def _on_data(self, data: bytes) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        if self._quickack is not None:
            # Acknowledge this segment at once instead of with our next PUBACK. A broker that
            # keeps Nagle on (mosquitto's default) sends its next small PUBLISH only once the
            # last one is ACKed; as PUBACKs leave only after a commit, every message would
            # otherwise wait for the commit of the one before it (2.5 ms median, measured).
            # Linux drops quick-ack mode on its own, so it is set again after every read.
            with contextlib.suppress(OSError):
                self._quickack.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        try:
            packets = self._parser.feed(data)
        except wire.ProtocolError as exc:
            self._fail(ConnectionLost(f"protocol error from broker: {exc}"))
            return
        inbox = self._inbox
        before = len(inbox)
        for p in packets:
            if type(p) is wire.Publish:
                inbox.append(p)
                if p.qos:
                    self._unacked += 1
            else:
                assert isinstance(p, wire.Packet)
                self._on_control(p)
        if len(inbox) != before:
            self._inbox_ready.set()
            if not self._paused and self._unacked >= self._max_pending and self._transport:
                # Stop reading: TCP backpressure then holds the rest at the broker, where it
                # is queued for our persistent session instead of growing our memory.
                self._paused = True
                self._transport.pause_reading()

    def _on_control(self, p: wire.Packet) -> None:
        kind, body = p.kind, p.body
        if kind == wire.CONNACK:
            if not self._connack.done() and len(body) >= 2:
                self._connack.set_result((bool(body[0] & 1), body[1]))
        elif kind == wire.PUBACK:
            fut = self._waiters.pop(wire.packet_id(body), None)
            if fut is not None and not fut.done():
                fut.set_result(wire.parse_reason(body, 2))
        elif kind == wire.SUBACK:
            mid = wire.packet_id(body)
            offset = wire.skip_properties(body, 2)
            self._suback[mid] = body[offset:]
            fut = self._waiters.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(0)
        elif kind == wire.DISCONNECT:
            reason = wire.parse_reason(body, 0)
            self._fail(ConnectionLost(f"broker disconnected us (reason 0x{reason:02x})"))
        # PINGRESP needs nothing beyond the receive time already noted.

    def _fail(self, exc: MqttError) -> None:
        self._mark_closed(exc)
        if self._transport is not None:
            self._transport.abort()

    def _on_lost(self, exc: Exception | None) -> None:
        self._mark_closed(ConnectionLost(f"connection lost: {exc}" if exc else "connection closed"))

    def _mark_closed(self, exc: MqttError) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_exc = exc
        if not self._connack.done():
            self._connack.set_exception(exc)
            # Retrieve it here so an abandoned open() never logs "exception never retrieved".
            self._connack.exception()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
        self._waiters.clear()
        self._inbox_ready.set()
        self._writable.set()
        self._done.set()
        task = self._keepalive_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(1.0, self.options.keepalive / 2)
        ping = wire.PINGREQ_BYTES
        while not self._closed:
            await asyncio.sleep(interval)
            if self._closed or self._transport is None:
                return
            # While reading is paused the broker's answers sit unread; that is not a dead link.
            if not self._paused and loop.time() - self._last_rx > self.options.keepalive * 1.5:
                self._fail(ConnectionLost("keepalive timeout: the broker stopped answering"))
                return
            self._transport.write(ping)

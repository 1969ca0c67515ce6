# A small asyncio MQTT 3.1.1 client. One connection at a time; reconnecting (and Wi-Fi) belongs
# to roost.link. Nothing blocks: the socket is an asyncio stream, reads go through memoryviews of
# preallocated buffers, and one QoS1 message is in flight at a time (retransmitted with DUP until
# its PUBACK arrives or the connection drops).
import asyncio
import time

from micropython import const

from roost import mqttpkt as pkt

_RETRY_MS = const(5000)
_POLL_MS = const(20)
_IBUF = const(1024)
_HBUF = const(256)


class MQTTError(OSError):
    pass


class MQTTClient:
    DEBUG = False

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        keepalive=30,
        user=None,
        password=None,
        will=None,
        on_message=None,
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.user = user
        self.password = password
        self.will = will
        self.on_message = on_message  # called as on_message(topic_mv, payload_mv, retained)
        self.retry_ms = _RETRY_MS  # QoS1: resend with DUP when no PUBACK came in this time
        self._hbuf = bytearray(_HBUF)
        self._obuf = bytearray(8)  # PUBACK replies from the reader task
        self._ibuf = bytearray(_IBUF)
        self._imv = memoryview(self._ibuf)
        self._r = None
        self._w = None
        self._reader = None
        self._pinger = None
        self._wlock = asyncio.Lock()
        self._qlock = asyncio.Lock()
        self._pid = 0
        self._wait_pid = 0  # packet id whose PUBACK/SUBACK we are waiting for; 0 when acked
        self._connack = -1
        self._up = False
        self._last_rx = 0
        self._last_tx = 0

    def isconnected(self):
        return self._up

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def connect(self, timeout_ms=10000):
        """Open the TCP connection, send CONNECT, wait for CONNACK. Raises OSError on failure."""
        self.close()
        self._r, self._w = await asyncio.wait_for_ms(
            asyncio.open_connection(self.host, self.port), timeout_ms
        )
        n = pkt.connect(
            self._hbuf, self.client_id, self.keepalive, True, self.user, self.password, self.will
        )
        self._connack = -1
        self._last_rx = time.ticks_ms()
        self._reader = asyncio.create_task(self._read_loop())
        await self._send(self._hbuf, n)
        t0 = time.ticks_ms()
        while self._connack < 0:
            if self._reader is None or time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
                self.close()
                raise MQTTError("no CONNACK")
            await asyncio.sleep_ms(_POLL_MS)
        if self._connack:
            code = self._connack
            self.close()
            raise MQTTError("CONNACK refused %d" % code)
        self._up = True
        self._pinger = asyncio.create_task(self._keepalive())

    def close(self):
        """Drop the connection (no DISCONNECT, so the broker publishes the last will)."""
        self._up = False
        cur = asyncio.current_task()
        for t in (self._reader, self._pinger):
            if t is not None and t is not cur:
                t.cancel()
        self._reader = self._pinger = None
        if self._w is not None:
            try:
                self._w.s.close()
            except (OSError, AttributeError):
                pass
        self._r = self._w = None

    async def disconnect(self):
        """Clean disconnect: the broker discards the last will."""
        if self._up:
            try:
                await self._send(pkt.DISCONNECT_PKT, 2)
            except OSError:
                pass
        self.close()

    async def _send(self, buf, n, payload=None):
        async with self._wlock:
            w = self._w
            if w is None:
                raise MQTTError("not connected")
            w.write(buf if n == len(buf) else memoryview(buf)[:n])
            if payload:
                w.write(payload)
            await w.drain()
            self._last_tx = time.ticks_ms()

    async def publish(self, topic, payload, qos=0, retain=False):
        """Publish; with qos=1 return only once the broker has acknowledged it."""
        if isinstance(payload, str):
            payload = payload.encode()
        if not qos:
            n = pkt.publish_header(self._hbuf, topic, len(payload), 0, retain)
            await self._send(self._hbuf, n, payload)
            return
        async with self._qlock:
            pid = self._next_pid()
            self._wait_pid = pid
            dup = False
            while True:
                if not self._up:
                    raise MQTTError("connection lost")
                n = pkt.publish_header(self._hbuf, topic, len(payload), 1, retain, dup, pid)
                await self._send(self._hbuf, n, payload)
                await self._await_ack(pid)
                if self._wait_pid == 0:
                    return
                dup = True

    async def subscribe(self, topic, qos=1):
        async with self._qlock:
            pid = self._next_pid()
            self._wait_pid = pid
            n = pkt.subscribe(self._hbuf, pid, topic, qos)
            await self._send(self._hbuf, n)
            await self._await_ack(pid)
            if self._wait_pid:
                raise MQTTError("no SUBACK")

    async def _await_ack(self, pid):
        t0 = time.ticks_ms()
        while self._wait_pid == pid and time.ticks_diff(time.ticks_ms(), t0) < self.retry_ms:
            if not self._up:
                raise MQTTError("connection lost")
            await asyncio.sleep_ms(_POLL_MS)

    async def _keepalive(self):
        ka = self.keepalive * 1000
        try:
            while self._up:
                await asyncio.sleep_ms(500)
                now = time.ticks_ms()
                if time.ticks_diff(now, self._last_rx) > ka * 3 // 2:
                    if self.DEBUG:
                        print("mqtt: keepalive timeout")
                    self.close()
                    return
                if time.ticks_diff(now, self._last_tx) > ka // 2:
                    await self._send(pkt.PINGREQ_PKT, 2)
        except OSError:
            self.close()

    async def _readn(self, n):
        mv = self._imv
        got = 0
        while got < n:
            k = await self._r.readinto(mv[got:n])
            if not k:
                raise MQTTError("connection closed")
            got += k
        self._last_rx = time.ticks_ms()

    async def _read_loop(self):
        imv = self._imv
        try:
            while True:
                await self._readn(1)
                first = imv[0]
                rl = 0
                shift = 0
                while True:
                    await self._readn(1)
                    rl |= (imv[0] & 0x7F) << shift
                    if not imv[0] & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MQTTError("bad length")
                kind = first & 0xF0
                if rl > _IBUF:
                    await self._skip(rl)  # oversized: dropped (never sent to this node by Roost)
                    continue
                if rl:
                    await self._readn(rl)
                if kind == pkt.CONNACK:
                    self._connack = imv[1]
                elif kind == pkt.PUBACK or kind == pkt.SUBACK:
                    if pkt.u16(imv, 0) == self._wait_pid:
                        self._wait_pid = 0
                elif kind == pkt.PUBLISH:
                    topic, pid, payload, qos, retained = pkt.parse_publish(first, imv[:rl])
                    if qos:
                        n = pkt.puback(self._obuf, pid)
                        await self._send(self._obuf, n)
                    if self.on_message:
                        self.on_message(topic, payload, retained)
        except asyncio.CancelledError:
            raise
        except (OSError, ValueError, IndexError) as e:
            if self.DEBUG:
                print("mqtt: reader", repr(e))
        self._reader = None
        self.close()

    async def _skip(self, n):
        while n:
            k = min(n, _IBUF)
            await self._readn(k)
            n -= k

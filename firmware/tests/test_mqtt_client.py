# The asyncio client against a scripted broker on a loopback socket: exact bytes on the wire,
# QoS1 retransmission with DUP until PUBACK, PUBACK for incoming QoS1, keepalive PINGREQ.
import asyncio
import os

from roost.mqtt import MQTTClient, MQTTError

# the pytest wrapper passes a base of free ports; each test takes the next one
PORT = [int(os.getenv("ROOST_TEST_PORT") or 18900)]


class Broker:
    """Records every packet the client sends; the test decides what to answer."""

    def __init__(self):
        self.packets = []
        self.w = None
        self.got = asyncio.Event()

    async def serve(self, r, w):
        self.w = w
        try:
            while True:
                first = await r.readexactly(1)
                rl = 0
                shift = 0
                while True:
                    b = (await r.readexactly(1))[0]
                    rl |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                body = await r.readexactly(rl) if rl else b""
                self.packets.append(first + bytes([rl]) + body if rl < 128 else first + body)
                self.got.set()
        except (EOFError, OSError):
            pass

    async def expect(self, n, timeout_ms=3000):
        t = 0
        while len(self.packets) < n:
            await asyncio.sleep_ms(10)
            t += 10
            assert t < timeout_ms, ("waited for packet", n, self.packets)
        return self.packets[n - 1]

    async def send(self, data):
        self.w.write(data)
        await self.w.drain()


async def start():
    b = Broker()
    # The base port was free when the wrapper picked it; the next ones may not be (other
    # servers run on this machine too): move on past any port that is taken.
    for _ in range(100):
        PORT[0] += 1
        try:
            server = await asyncio.start_server(b.serve, "127.0.0.1", PORT[0])
        except OSError:
            continue
        return b, server
    raise OSError("no free port for the scripted broker")


async def test_connect_publish_qos1_with_retransmission():
    b, server = await start()
    got = []
    c = MQTTClient(
        "n1",
        "127.0.0.1",
        PORT[0],
        keepalive=60,
        will=("s", "off", 1, True),
        on_message=lambda t, p, r: got.append((bytes(t), bytes(p))),
    )
    c.retry_ms = 300
    task = asyncio.create_task(c.connect())
    pkt = await b.expect(1)
    assert pkt == b"\x10\x16\x00\x04MQTT\x04\x2e\x00\x3c\x00\x02n1\x00\x01s\x00\x03off", pkt
    await b.send(b"\x20\x02\x00\x00")
    await task
    assert c.isconnected()

    pub = asyncio.create_task(c.publish("r", b"hi", qos=1))
    first = await b.expect(2)
    assert first == b"\x32\x07\x00\x01r\x00\x01hi", first
    again = await b.expect(3)  # no PUBACK yet: the same packet id again, now with DUP
    assert again == b"\x3a\x07\x00\x01r\x00\x01hi", again
    assert not pub.done()
    await b.send(b"\x40\x02\x00\x01")
    await asyncio.wait_for_ms(pub, 1000)

    # an incoming QoS1 command is acknowledged and handed over
    await b.send(b"\x32\x09\x00\x03cmd\x00\x05go")
    ack = await b.expect(4)
    assert ack == b"\x40\x02\x00\x05", ack
    assert got == [(b"cmd", b"go")], got
    c.close()
    server.close()


async def test_subscribe_and_keepalive_ping():
    b, server = await start()
    c = MQTTClient("k", "127.0.0.1", PORT[0], keepalive=1)
    task = asyncio.create_task(c.connect())
    await b.expect(1)
    await b.send(b"\x20\x02\x00\x00")
    await task
    sub = asyncio.create_task(c.subscribe("a/#", 1))
    pkt = await b.expect(2)
    assert pkt == b"\x82\x08\x00\x01\x00\x03a/#\x01", pkt
    await b.send(b"\x90\x03\x00\x01\x01")
    await asyncio.wait_for_ms(sub, 1000)
    ping = await b.expect(3, 2500)
    assert ping == b"\xc0\x00", ping
    await b.send(b"\xd0\x00")
    # no answer to the next pings: the client gives the connection up after 1.5 keepalives
    t = 0
    while c.isconnected():
        await asyncio.sleep_ms(50)
        t += 50
        assert t < 4000, "dead connection not noticed"
    server.close()


async def test_refused_connack_and_publish_when_down():
    b, server = await start()
    c = MQTTClient("x", "127.0.0.1", PORT[0])
    task = asyncio.create_task(c.connect())
    await b.expect(1)
    await b.send(b"\x20\x02\x00\x05")  # not authorised
    try:
        await task
        raise AssertionError("connected although refused")
    except MQTTError as e:
        assert "5" in str(e)
    try:
        await c.publish("t", b"x", qos=1)
        raise AssertionError
    except OSError:
        pass
    server.close()

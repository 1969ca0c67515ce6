"""Fixtures for the firmware tests: a private mosquitto, an independent subscriber
(``mosquitto_sub``), and virtual nodes running the real firmware in the MicroPython unix port."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.virtual import VirtualNode

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """mosquitto on 127.0.0.1 with persistence in a temporary folder; stoppable and restartable
    on the same port, to make outages."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.conf = home / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {home}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"
            # as root mosquitto would drop to the "mosquitto" user and fail to write here
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"log_dest file {home}/mosquitto.log\n"
        )

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass(frozen=True, slots=True)
class Msg:
    retained: bool
    topic: str
    payload: str

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """``mosquitto_sub`` on ``roost/v1/#`` with a persistent QoS1 session, restarted whenever it
    loses the broker, so nothing published during a test is missed."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.client_id = client_id
        self.messages: list[Msg] = []
        self._stop = False
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._proc = subprocess.Popen(
                [
                    "mosquitto_sub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-t",
                    "roost/v1/#",
                    "-q",
                    "1",
                    "-c",
                    "-i",
                    self.client_id,
                    "-F",
                    "%r %t %p",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            with self._proc:  # closes the pipe too
                assert self._proc.stdout is not None
                for line in self._proc.stdout:
                    retained, topic, payload = line.rstrip("\n").split(" ", 2)
                    self.messages.append(Msg(retained == "1", topic, payload))
            time.sleep(0.2)

    def close(self) -> None:
        self._stop = True
        if self._proc is not None:
            self._proc.terminate()
        self._thread.join(5)

    def on(self, node_id: str, kind: str) -> list[Msg]:
        topic = f"roost/v1/{node_id}/{kind}"
        return [m for m in list(self.messages) if m.topic == topic]

    def readings(self, node_id: str) -> list[dict[str, Any]]:
        """Every reading received, arrays flattened, in arrival order."""
        out: list[dict[str, Any]] = []
        for m in self.on(node_id, "readings"):
            v = m.json()
            out.extend(v if isinstance(v, list) else [v])
        return out


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: last {last!r}")


def contiguous(readings: list[dict[str, Any]], boot: int) -> list[int]:
    return sorted(r["s"] for r in readings if r["b"] == boot)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    s = Subscriber(mosquitto.port, f"roost-test-{mosquitto.port}")
    # the subscription must exist before any node publishes
    deadline = time.monotonic() + 10
    while s._proc is None or not _session_exists(mosquitto):
        if time.monotonic() > deadline:
            raise RuntimeError("mosquitto_sub did not connect")
        time.sleep(0.05)
    try:
        yield s
    finally:
        s.close()


def _session_exists(b: Mosquitto) -> bool:
    log = b.home / "mosquitto.log"
    return log.exists() and "roost-test-" in log.read_text()


def node_config(port: int, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node_id": "vn1",
        "wifi": {"ssid": "test", "password": "secret"},
        "gateway": {"host": "127.0.0.1", "port": port},
        "mqtt": {"keepalive_s": 5},
        "interval_s": 1,
        "backoff_max_s": 2,
        "wdt_ms": 3000,
        "test_mode": True,
    }
    cfg.update(over)
    return cfg


NodeFactory = Callable[..., Awaitable[VirtualNode]]


@pytest.fixture
async def make_node(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[NodeFactory]:
    nodes: list[VirtualNode] = []

    async def make(name: str = "vn1", board: str = "pico_w", **over: Any) -> VirtualNode:
        over.setdefault("node_id", name)
        n = VirtualNode(tmp_path / name, node_config(mosquitto.port, **over), board=board)
        nodes.append(n)
        await n.start()
        return n

    yield make
    for n in nodes:
        await n.stop()


async def mqtt_pub(port: int, topic: str, payload: dict[str, Any]) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        json.dumps(payload),
    )
    assert await proc.wait() == 0

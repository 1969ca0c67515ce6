"""The HIL rig: boards on serial ports (real or virtual) and a real gateway with its broker.

A ``Board`` talks to a node the way a bench does, with pyserial on its port: the firmware's
console protocol (``!roost <cmd>`` -> ``roost: {json}``), reopening the port after resets (a Pico
W's /dev/ttyACM0 disappears while it reboots). Host powers (power cycle, Wi-Fi access point,
sensor faults, full flash) exist only on virtual boards; ``board.powers()`` skips the test on a
real one. ``Bench`` is the gateway side: a managed mosquitto (stoppable, for broker outages), a
``roost run`` process ingesting into SQLite, an independent subscriber for births and acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import serial

from gateway.broker.managed import ManagedBroker
from gateway.mqtt.client import Connection, ConnectOptions
from gateway.virtual.board import VirtualBoard
from tests.conftest import GatewayProcess, free_port

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def until(fn: Callable[[], T], timeout: float = 20.0, what: str = "", every: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last {last!r}")


@dataclass
class Board:
    """One board under test, on its serial port."""

    label: str
    kind: str  # pico_w | esp32
    port: str
    node_id: str
    virtual: VirtualBoard | None = None
    fw: str = ""
    micropython: str = ""
    _ser: serial.Serial | None = field(default=None, repr=False)

    # -- the port ----------------------------------------------------------------------------
    def open(self, timeout: float = 15.0) -> serial.Serial:
        if self._ser is not None:
            return self._ser
        ser = serial.Serial()
        ser.port = self.port
        ser.baudrate = 115200
        ser.timeout = 0.2
        if self.kind == "esp32":
            # DTR/RTS drive EN and GPIO0 on ESP32 dev boards: keep the chip running on open
            ser.dtr = False
            ser.rts = False
        until(lambda: os.path.exists(self.port), timeout, f"{self.port} to reappear")
        ser.open()
        ser.reset_input_buffer()
        self._ser = ser
        return ser

    def close(self) -> None:
        if self._ser is not None:
            with contextlib.suppress(OSError):
                self._ser.close()
            self._ser = None

    def reopen(self) -> None:
        """After a reset: a real board's port goes away and comes back."""
        self.close()
        self.open()

    def console(self, command: str, timeout: float = 5.0) -> dict[str, Any]:
        """``!roost <command>``; returns the decoded answer line (other lines are logs)."""
        word = command.split()[0]
        deadline = time.monotonic() + timeout
        while True:
            try:
                ser = self.open()
                ser.reset_input_buffer()
                ser.write(f"!roost {command}\n".encode())
                while time.monotonic() < deadline:
                    line = ser.readline().decode(errors="replace").strip()
                    if line.startswith("roost: "):
                        with contextlib.suppress(ValueError):
                            answer: dict[str, Any] = json.loads(line[7:])
                            if answer.get("cmd") == word:
                                return answer
            except (OSError, serial.SerialException):
                self.close()  # the board reset under us: reopen and ask again
                time.sleep(0.2)
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.label}: no answer to !roost {command}")

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The console status, asking again while the node is still booting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.console("status", timeout=min(3.0, timeout))
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def powers(self) -> VirtualBoard:
        """The host powers of a virtual board; a test that needs them is skipped on real ones."""
        if self.virtual is None:
            pytest.skip("needs host powers (power cycle, Wi-Fi AP, sensor faults): virtual only")
        return self.virtual


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retained: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """mosquitto_sub on ``roost/v1/#`` in a thread, independent of the gateway."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Msg] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-t", "roost/v1/#",
             "-q", "1", "-F", "%r\t%t\t%p"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            parts = raw.rstrip(b"\n").split(b"\t", 2)
            if len(parts) == 3:
                with self._lock:
                    self.messages.append(Msg(parts[1].decode(), parts[2], parts[0] == b"1"))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            if self._thread is not None:
                self._thread.join(5)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def on(self, node_id: str, suffix: str, since: int = 0) -> list[Msg]:
        topic = f"roost/v1/{node_id}/{suffix}"
        with self._lock:
            return [m for m in self.messages[since:] if m.topic == topic]

    def mark(self) -> int:
        with self._lock:
            return len(self.messages)

    def births(self, node_id: str, since: int = 0) -> list[dict[str, Any]]:
        out = []
        for m in self.on(node_id, "status", since):
            with contextlib.suppress(ValueError):
                s = m.json()
                if s.get("state") in ("online", "safe_mode") and not m.retained:
                    out.append(s)
        return out


class Bench:
    """The gateway side of the rig: broker, ``roost run``, subscriber, store queries."""

    def __init__(self, home: Path, bind: str) -> None:
        self.home = home
        self.port = free_port()
        self.broker = ManagedBroker(home / "broker", port=self.port, bind=bind)
        self.data = home / "data"
        self.gateway = GatewayProcess(
            self.data,
            ["--mqtt-url", f"mqtt://127.0.0.1:{self.port}", "--http-host", "127.0.0.1",
             "--http-port", str(free_port())],
            home / "gateway.log",
        )
        self.sub = Subscriber(self.port)

    def start(self) -> None:
        self.broker_up()
        self.sub.start()
        self.gateway.start()
        until(lambda: (self.data / "roost.sqlite3").exists(), 30, "the gateway's store")

    def stop(self) -> None:
        self.sub.stop()
        if self.gateway.proc is not None and self.gateway.proc.poll() is None:
            self.gateway.terminate()
        with contextlib.suppress(Exception):
            asyncio.run(self.broker.stop())

    def broker_up(self) -> None:
        asyncio.run(self.broker.start())

    def broker_down(self) -> None:
        asyncio.run(self.broker.stop())

    # -- the store, read as any reader would ---------------------------------------------------
    def _q(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.data / 'roost.sqlite3'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # schema not created yet
        finally:
            db.close()

    def seqs(self, node_id: str, boot: int) -> set[int]:
        rows = self._q(
            "SELECT m.seq FROM messages m JOIN nodes n ON n.node_ref = m.node_ref "
            "WHERE n.node_id = ? AND m.boot = ?", node_id, boot,
        )
        return {r[0] for r in rows}

    def value(self, node_id: str, boot: int, seq: int, metric: str) -> float | None:
        rows = self._q(
            "SELECT r.value FROM readings r JOIN messages m ON m.id = r.message_id "
            "JOIN nodes n ON n.node_ref = m.node_ref JOIN metrics k ON k.metric_ref = r.metric_ref "
            "WHERE n.node_id = ? AND m.boot = ? AND m.seq = ? AND k.name = ?",
            node_id, boot, seq, metric,
        )
        return rows[0][0] if rows else None

    def metrics(self, node_id: str, boot: int, seq: int) -> set[str]:
        rows = self._q(
            "SELECT k.name FROM readings r JOIN messages m ON m.id = r.message_id "
            "JOIN nodes n ON n.node_ref = m.node_ref JOIN metrics k ON k.metric_ref = r.metric_ref "
            "WHERE n.node_id = ? AND m.boot = ? AND m.seq = ?", node_id, boot, seq,
        )
        return {r[0] for r in rows}

    def node(self, node_id: str) -> dict[str, Any]:
        db = sqlite3.connect(f"file:{self.data / 'roost.sqlite3'}?mode=ro", uri=True, timeout=5)
        db.row_factory = sqlite3.Row
        try:
            row = db.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        except sqlite3.OperationalError:
            row = None
        finally:
            db.close()
        return dict(row) if row is not None else {}

    def wait_seqs(self, node_id: str, boot: int, want: set[int], timeout: float = 30) -> set[int]:
        return until(lambda: want <= self.seqs(node_id, boot) and self.seqs(node_id, boot),
                     timeout, f"{node_id} boot {boot} seqs {sorted(want)} at the gateway")

    # -- commands to a node ----------------------------------------------------------------------
    def command(self, node_id: str, cmd: dict[str, Any]) -> None:
        async def send() -> None:
            conn = await Connection.open(ConnectOptions(
                host="127.0.0.1", port=self.port, client_id=f"hil-cmd-{time.monotonic_ns()}",
                clean_start=True, session_expiry=0,
            ))
            try:
                await conn.publish(f"roost/v1/{node_id}/cmd", json.dumps(cmd).encode(), qos=1)
            finally:
                await conn.close()

        asyncio.run(send())

    def ack(self, node_id: str, cid: str, timeout: float = 15) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for m in self.sub.on(node_id, "cmd/ack"):
                with contextlib.suppress(ValueError):
                    a: dict[str, Any] = m.json()
                    if a.get("id") == cid:
                        return a
            return None

        return until(find, timeout, f"ack {cid} from {node_id}")


def roost_flash(board: Board, bench: Bench, gateway_host: str, extra: dict[str, Any],
                wifi: tuple[str, str] | None, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``roost flash`` as a person runs it (the CLI, real mpremote underneath)."""
    cfg = tmp / f"{board.node_id}-extra.json"
    cfg.write_text(json.dumps(extra))
    args = [sys.executable, "-m", "gateway", "flash", "--board", board.kind, "--port", board.port,
            "--node-id", board.node_id, "--gateway", gateway_host, "--mqtt-port", str(bench.port),
            "--test-mode", "--interval", "1", "--config-json", str(cfg), "--timeout", "60"]
    if wifi is not None:
        args += ["--wifi-ssid", wifi[0], "--wifi-password", wifi[1]]
    board.close()  # mpremote needs the port to itself
    return subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=REPO)

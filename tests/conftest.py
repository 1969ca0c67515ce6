"""Fixtures for real resources: a mosquitto broker on a free loopback port, a gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.broker.managed import ManagedBroker, find_mosquitto

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def mosquitto_exe() -> str:
    return find_mosquitto()


@pytest.fixture
async def broker(tmp_path: Path, mosquitto_exe: str) -> AsyncIterator[ManagedBroker]:
    """A real mosquitto on 127.0.0.1 with the managed broker's durable config."""
    b = ManagedBroker(tmp_path / "broker-home", port=free_port(), bind="127.0.0.1",
                      executable=mosquitto_exe)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


class GatewayProcess:
    """``roost run`` as a child process, for tests that SIGKILL it."""

    def __init__(self, data_dir: Path, args: list[str], log: Path) -> None:
        self.data_dir = data_dir
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        out = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--data-dir", str(self.data_dir), *self.args],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env, cwd=self.data_dir.parent,
        )
        out.close()
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    procs: list[GatewayProcess] = []

    def make(*args: str, data_dir: Path | None = None) -> GatewayProcess:
        g = GatewayProcess(data_dir or tmp_path / "data", list(args), tmp_path / "gateway.log")
        procs.append(g)
        return g

    yield make
    for g in procs:
        if g.proc is not None and g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait()
        # A managed broker a test left behind (the gateway was SIGKILLed) must not outlive it.
        record = g.data_dir / "broker" / "broker.json"
        if record.exists():
            import json

            with contextlib.suppress(Exception):
                os.kill(int(json.loads(record.read_text())["pid"]), signal.SIGKILL)


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = ""):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (sync or async) until it returns a truthy value; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}: last {last!r}"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    # The HIL rig's options live here: a sub-folder's conftest is loaded too late for them.
    from tests.hil.options import add_options

    add_options(parser)


class InProcessGateways:
    """Gateways run in the test's own event loop against a test broker.

    ``await gateways.start(toml)`` returns a connected ``Gateway``; at teardown every gateway is
    stopped and must exit cleanly (code 0), so a shutdown that breaks fails the test.
    """

    def __init__(self, broker_url: str, tmp_path: Path) -> None:
        self.broker_url = broker_url
        self.tmp_path = tmp_path
        self.running: list[tuple[object, asyncio.Task[int]]] = []

    async def start(self, toml: str = "", *, data_dir: Path | None = None,
                    overrides: dict | None = None, ready=None):  # type: ignore[no-untyped-def,type-arg]
        from gateway.config import load_settings
        from gateway.service import Gateway

        cfg = self.tmp_path / f"roost{len(self.running)}.toml"
        cfg.write_text(toml)
        over = {"gateway": {"data_dir": str(data_dir or self.tmp_path / "data")},
                "mqtt": {"url": self.broker_url}}
        for section, values in (overrides or {}).items():
            over.setdefault(section, {}).update(values)
        settings, _ = load_settings(cfg, overrides=over, env={})
        gw = Gateway(settings)
        task = asyncio.create_task(gw.run(handle_signals=False))
        self.running.append((gw, task))

        def up() -> bool:
            if task.done():  # it failed on start: show why
                raise AssertionError(f"gateway stopped: {task.exception() or task.result()!r}")
            connected = gw.ingest is not None and gw.ingest.state.connected
            return bool(connected and (ready is None or ready(gw)))

        await wait_for(up, what="gateway connected")
        return gw

    async def stop_all(self) -> None:
        for gw, _ in self.running:
            gw.stop()  # type: ignore[attr-defined]
        for _, task in self.running:
            assert await asyncio.wait_for(task, 30) == 0


@pytest.fixture
async def gateways(broker: ManagedBroker, tmp_path: Path) -> AsyncIterator[InProcessGateways]:
    g = InProcessGateways(broker.url, tmp_path)
    yield g
    await g.stop_all()

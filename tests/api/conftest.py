"""Fixtures for the API tests: an in-process gateway fed by a real mosquitto, serving HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broker.managed import ManagedBroker
from gateway.config import load_settings
from gateway.service import Gateway
from tests.conftest import free_port, wait_for
from tests.gateway.helpers import counter, publish_all


@dataclass
class Running:
    """A started gateway: its HTTP base URL, broker and data dir."""

    gateway: Gateway
    base: str
    broker: ManagedBroker
    data_dir: Path

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://")

    @property
    def token(self) -> str:
        return (self.data_dir / "admin_token").read_text().strip()

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=30, **kw)

    async def publish(self, items: list[tuple[str, bytes]]) -> None:
        assert await publish_all(self.broker.port, "api-test-pub", items) == 0

    async def wait_stored(self, n: int) -> None:
        await wait_for(lambda: counter(self.data_dir, "stored") >= n, what=f"{n} stored")


StartGateway = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_gateway(
    broker: ManagedBroker, tmp_path: Path
) -> AsyncIterator[StartGateway]:
    """``await start_gateway(ws_queue=4, ...)``: a gateway with these ``[api]`` settings."""
    started: list[tuple[Gateway, asyncio.Task[int]]] = []

    async def start(**api: Any) -> Running:
        port = free_port()
        data_dir = tmp_path / f"data{len(started)}"
        settings, _ = load_settings(
            None,
            overrides={
                "gateway": {"data_dir": str(data_dir)},
                "mqtt": {"url": broker.url},
                "http": {"host": "127.0.0.1", "port": port},
                "api": api,
            },
            env={},
            search=(),
        )
        gw = Gateway(settings)
        task = asyncio.create_task(gw.run(handle_signals=False))
        started.append((gw, task))
        def ready() -> bool:
            if task.done():  # failed on start: show why
                raise AssertionError(f"gateway stopped: {task.exception() or task.result()!r}")
            return bool(
                gw.ingest is not None and gw.ingest.state.connected
                and gw.api is not None and gw.api.bound.is_set()
            )

        await wait_for(ready, what="gateway connected and serving")
        return Running(gw, f"http://127.0.0.1:{port}", broker, data_dir)

    yield start
    for gw, task in started:
        gw.stop()
        with contextlib.suppress(Exception):
            assert await asyncio.wait_for(task, 30) == 0


@pytest.fixture
async def running(start_gateway: StartGateway) -> Running:
    return await start_gateway()

"""Fixtures for the API tests: an in-process gateway fed by a real mosquitto, serving HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broker.managed import ManagedBroker
from gateway.service import Gateway
from tests.conftest import InProcessGateways, free_port, wait_for
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
def start_gateway(broker: ManagedBroker, gateways: InProcessGateways) -> StartGateway:
    """``await start_gateway(ws_queue=4, ...)``: a gateway with these ``[api]`` settings."""
    count = 0

    async def start(**api: Any) -> Running:
        nonlocal count
        port = free_port()
        data_dir = gateways.tmp_path / f"data{count}"
        count += 1
        gw = await gateways.start(
            data_dir=data_dir,
            overrides={"http": {"host": "127.0.0.1", "port": port}, "api": api},
            ready=lambda g: g.api is not None and g.api.bound.is_set(),
        )
        return Running(gw, f"http://127.0.0.1:{port}", broker, data_dir)

    return start


@pytest.fixture
async def running(start_gateway: StartGateway) -> Running:
    return await start_gateway()

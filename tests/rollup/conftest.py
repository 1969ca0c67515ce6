"""A real store file driven by the real StoreWriter, and the rollup on top of it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings, load_settings
from gateway.model import Message
from gateway.rollup.hours import HOUR_MS, hour_of
from gateway.rollup.scheduler import Rollup
from gateway.store.writer import StoreWriter, Unit, now_ms

#: A closed hour a day ago: inside the accepted window, outside the grace period.
HOUR = hour_of(now_ms()) - 24 * HOUR_MS


def msg(node: str, boot: int, seq: int, ts: int, **metrics: float) -> Message:
    return Message(node, boot, seq, ts, seq * 1000, tuple(sorted(metrics.items())))


def fleet(hour: int, nodes: int, per_node: int, *, first_seq: int = 0) -> list[Message]:
    """Readings of ``nodes`` nodes spread over ``hour``, three metrics each, DHT22-like values."""
    out = []
    step = HOUR_MS // per_node
    for s in range(first_seq, first_seq + per_node):
        for n in range(nodes):
            out.append(msg(f"node-{n:03d}", 1, s, hour + (s - first_seq) * step + n,
                           temp_c=round(20 + (s % 17) / 10, 1), rh_pct=round(45 + n / 10, 1),
                           pressure_hpa=1013.2 + s))
    return out


@dataclass
class Store:
    settings: Settings
    writer: StoreWriter
    rollup: Rollup

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    async def add(self, messages: list[Message]) -> None:
        for i in range(0, len(messages), 500):
            await self.writer.submit(Unit(messages[i:i + 500], now_ms()))
        await self.writer.drain()

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.data_dir / 'roost.sqlite3'}?mode=ro", uri=True)

    def one(self, sql: str, *args: object) -> Any:
        conn = self.db()
        try:
            return conn.execute(sql, args).fetchone()[0]
        finally:
            conn.close()


def settings_for(data_dir: Path, text: str = "") -> Settings:
    cfg = data_dir.parent / "roost.toml"
    cfg.write_text(text)
    s, _ = load_settings(cfg, overrides={"gateway": {"data_dir": str(data_dir)}}, env={})
    return s


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Any]:
    writers: list[tuple[StoreWriter, asyncio.Task[None]]] = []

    async def make(text: str = "", data_dir: Path | None = None) -> Store:
        s = settings_for(data_dir or tmp_path / "data", text)
        w = StoreWriter(s.data_dir / "roost.sqlite3")
        await w.open()
        writers.append((w, asyncio.create_task(w.run())))
        return Store(s, w, Rollup(s, w))

    return make


@pytest.fixture
async def store(make_store: Callable[..., Any]) -> AsyncIterator[Store]:
    yield await make_store()


@pytest.fixture(autouse=True)
async def _close_writers(make_store: Callable[..., Any]) -> AsyncIterator[None]:
    yield
    # make_store's closure holds the writers; close them so no thread outlives the test.
    for cell in make_store.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, list):
            for w, task in value:
                task.cancel()
                with __import__("contextlib").suppress(asyncio.CancelledError):
                    await task
                await w.close()


def duck(root: Path, sql_tail: str = "") -> list[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect()
    try:
        return con.execute(
            "SELECT node_id, metric, epoch_ms(ts), value, boot, seq, epoch_ms(received), flags, "
            "date, hour FROM read_parquet(?, hive_partitioning = true) " + sql_tail,
            [str(root / "readings" / "**" / "*.parquet")],
        ).fetchall()
    finally:
        con.close()

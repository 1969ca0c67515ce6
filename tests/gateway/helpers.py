"""Test helpers: resilient QoS1 publishers and direct reads of a store file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

from gateway.mqtt.client import Connection, ConnectOptions, MqttError


def reading(boot: int, seq: int, **metrics: float) -> bytes:
    return json.dumps({"b": boot, "s": seq, "u": seq * 1000, "m": metrics or {"temp_c": 20.0}},
                      separators=(",", ":")).encode()


async def publish_all(
    port: int, client_id: str, items: list[tuple[str, bytes]], *, window: int = 50,
    stop_after: float = 120.0,
) -> int:
    """Publish every item with QoS1 until the broker PUBACKs it, reconnecting as needed.

    Returns how many connection attempts failed or broke (each may resend a few items).
    """
    acked = [False] * len(items)
    start = 0
    troubles = 0
    async with asyncio.timeout(stop_after):
        while start < len(items):
            try:
                conn = await Connection.open(
                    ConnectOptions("127.0.0.1", port, client_id, clean_start=True,
                                   session_expiry=0, connect_timeout=2)
                )
            except MqttError:
                troubles += 1
                await asyncio.sleep(0.1)
                continue
            try:
                while start < len(items):
                    chunk = range(start, min(start + window, len(items)))

                    async def one(i: int, conn: Connection = conn) -> None:
                        await conn.publish(*items[i], qos=1)
                        acked[i] = True

                    results = await asyncio.gather(*(one(i) for i in chunk),
                                                   return_exceptions=True)
                    errors = [r for r in results if isinstance(r, BaseException)]
                    if errors:
                        raise MqttError(str(errors[0]))
                    start = chunk.stop
            except MqttError:
                troubles += 1
                start = next((i for i in range(start, len(items)) if not acked[i]), len(items))
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
    return troubles


def db(data_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{data_dir / 'roost.sqlite3'}?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def count(data_dir: Path, sql: str, *args: object) -> int:
    path = data_dir / "roost.sqlite3"
    if not path.exists():
        return -1
    conn = db(data_dir)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    except sqlite3.OperationalError:
        return -1
    finally:
        conn.close()


def counter(data_dir: Path, name: str) -> int:
    return count(data_dir, "SELECT coalesce((SELECT value FROM counters WHERE name = ?), 0)", name)

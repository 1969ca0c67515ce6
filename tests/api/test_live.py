"""The live WebSocket: backfill then live, filters, slow clients, and the hub's policies."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import pytest
from websockets.asyncio.client import connect

from gateway.api.live import LiveHub
from gateway.store.plan import StoredMessage
from gateway.store.writer import CommitResult
from tests.api.conftest import Running, StartGateway
from tests.api.fleet import reading_now
from tests.conftest import wait_for
from tests.gateway.helpers import counter

pytestmark = pytest.mark.integration


async def frames_until(ws, pred, timeout: float = 15.0) -> list[dict]:  # type: ignore[no-untyped-def]
    got = []
    async with asyncio.timeout(timeout):
        while not pred(got):
            got.append(json.loads(await ws.recv()))
    return got


def messages(frames: list[dict]) -> list[dict]:
    return [m for f in frames if f["type"] == "readings" for m in f["data"]]


async def test_backfill_then_live_filtered(running: Running) -> None:
    await running.publish([reading_now("a", s, temp_c=20.0 + s, rh_pct=50.0) for s in range(5)]
                          + [reading_now("b", 0, temp_c=1.0)])
    await running.wait_stored(6)
    async with connect(f"{running.ws}/ws/live?node=a&metric=temp_c") as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "backfill"
        assert [m["seq"] for m in first["data"]] == [0, 1, 2, 3, 4]
        assert all(m["node"] == "a" and set(m["metrics"]) == {"temp_c"} for m in first["data"])
        await running.publish([reading_now("b", 1, temp_c=2.0)]
                              + [reading_now("a", s, temp_c=30.0, rh_pct=1.0) for s in (5, 6, 7)])
        got = messages(await frames_until(ws, lambda fs: len(messages(fs)) >= 3))
    assert [m["seq"] for m in got] == [5, 6, 7]
    assert all(m["node"] == "a" and m["metrics"] == {"temp_c": 30.0} for m in got)
    assert got[0]["id"] > first["data"][-1]["id"]


async def test_backfill_can_be_turned_off_and_all_nodes_by_default(running: Running) -> None:
    await running.publish([reading_now("a", 0, temp_c=1.0)])
    await running.wait_stored(1)
    async with connect(f"{running.ws}/ws/live?backfill=0") as ws:
        assert json.loads(await ws.recv()) == {"type": "backfill", "data": []}
        await running.publish([reading_now("a", 1, temp_c=2.0), reading_now("b", 0, x_pct=3.0)])
        got = messages(await frames_until(ws, lambda fs: len(messages(fs)) >= 2))
    assert {m["node"] for m in got} == {"a", "b"}


async def _stuck_client(ws_base: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads a byte."""
    host, port = ws_base.removeprefix("ws://").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, (host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(s,
        f"GET /ws/live HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await loop.sock_recv(s, 12)) == b"HTTP/1.1 101"
    return s


async def _flood_until(running: Running, done, start_seq: int = 0) -> int:  # type: ignore[no-untyped-def]
    """Publish rounds of wide messages until ``done()``; returns how many were published."""
    metrics = {f"m{i:02d}_pct": float(i) for i in range(30)}
    seq = start_seq
    for _ in range(40):
        await running.publish([reading_now("flood", s, **metrics) for s in range(seq, seq + 1000)])
        seq += 1000
        if await done():
            return seq - start_seq
    raise AssertionError("the stuck client never filled its queue")


async def _metric(running: Running, name: str) -> float:
    async with running.client() as c:
        text = (await c.get("/metrics")).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


async def test_stuck_client_drops_frames_but_stalls_nothing(start_gateway: StartGateway) -> None:
    running = await start_gateway(ws_queue=4, ws_slow_policy="drop")
    stuck = await _stuck_client(running.ws)
    async with connect(f"{running.ws}/ws/live?node=flood&backfill=0", max_size=None) as fast:
        assert json.loads(await fast.recv())["type"] == "backfill"

        async def dropped() -> bool:
            return await _metric(running, "roost_ws_frames_dropped_total") > 0

        sent = await _flood_until(running, dropped)
        # Ingest kept up: everything published is stored...
        await wait_for(lambda: counter(running.data_dir, "stored") == sent, what="all stored")
        # ...and the healthy client got every message, in commit order, without a gap.
        got = messages(await frames_until(fast, lambda fs: len(messages(fs)) >= sent, 60))
        assert [m["seq"] for m in got] == list(range(sent))
    assert await _metric(running, "roost_ws_clients") == 1  # the stuck one is still connected
    stuck.close()


async def test_stuck_client_is_disconnected_by_policy(start_gateway: StartGateway) -> None:
    running = await start_gateway(ws_queue=2, ws_slow_policy="disconnect")
    stuck = await _stuck_client(running.ws)

    async def kicked() -> bool:
        return await _metric(running, "roost_ws_slow_disconnects_total") > 0

    sent = await _flood_until(running, kicked)
    await wait_for(lambda: counter(running.data_dir, "stored") == sent, what="all stored")
    assert await _metric(running, "roost_ws_clients") == 0
    stuck.close()


# -- the hub alone: exact accounting ---------------------------------------------------------


def commit(*ids: int, node: str = "n") -> CommitResult:
    return CommitResult(committed=[
        StoredMessage(i, node, 1, i, 1000 * i, 1000 * i, 0, (("temp_c", float(i)),)) for i in ids
    ])


async def test_hub_drop_policy_counts_and_reports_gaps() -> None:
    hub = LiveHub(queue_size=2, policy="drop")
    slow = hub.connect()
    other = hub.connect(nodes=("m",))
    for i in range(1, 6):
        hub.publish(commit(i))
    assert slow.queue.qsize() == 2
    assert (hub.frames_queued, hub.frames_dropped) == (2, 3)
    assert slow.take_gap() == (3, 3) and slow.take_gap() == (0, 0)
    assert other.queue.empty()  # filtered out: nothing for it, nothing dropped
    frame = slow.queue.get_nowait()
    assert frame is not None and json.loads(frame.data)["data"][0]["id"] == 1


async def test_hub_disconnect_policy_ends_the_feed() -> None:
    hub = LiveHub(queue_size=1, policy="disconnect")
    slow = hub.connect()
    hub.publish(commit(1))
    hub.publish(commit(2))
    assert slow.kicked and hub.slow_disconnects == 1
    assert slow not in hub.clients
    assert slow.queue.get_nowait() is None


async def test_hub_shares_one_encoding_per_filter() -> None:
    hub = LiveHub()
    a, b = hub.connect(metrics=("temp_c",)), hub.connect(metrics=("temp_c",))
    hub.publish(commit(1, 2))
    fa, fb = a.queue.get_nowait(), b.queue.get_nowait()
    assert fa is fb and fa is not None and (fa.first_id, fa.last_id, fa.messages) == (1, 2, 2)

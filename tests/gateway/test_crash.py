"""Crash tests: SIGKILLed gateways, restarted brokers. Exactly N readings, none twice."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path

import pytest

from gateway.broker.managed import ManagedBroker
from tests.conftest import free_port, wait_for
from tests.gateway.helpers import count, counter, publish_all, reading

pytestmark = pytest.mark.integration


def _items(node: str, n: int, boot: int = 1) -> list[tuple[str, bytes]]:
    return [(f"roost/v1/{node}/readings", reading(boot, s, temp_c=20 + s % 50 / 10,
                                                  rh_pct=40.0)) for s in range(n)]


def _assert_exact(d: Path, nodes: int, per_node: int) -> None:
    total = nodes * per_node
    assert count(d, "SELECT count(*) FROM messages") == total
    distinct = "SELECT count(*) FROM (SELECT DISTINCT node_ref, boot, seq FROM messages)"
    assert count(d, distinct) == total
    assert count(d, "SELECT count(*) FROM readings") == 2 * total
    assert count(d, "SELECT count(*) FROM (SELECT message_id, metric_ref FROM readings "
                    "GROUP BY 1, 2 HAVING count(*) > 1)") == 0
    for node in range(nodes):
        # Every seq 0..per_node-1 of every node is there.
        assert count(d, "SELECT count(*) FROM messages m JOIN nodes n USING (node_ref) "
                        "WHERE n.node_id = ? AND m.seq BETWEEN 0 AND ?",
                     f"node{node}", per_node - 1) == per_node


async def test_gateway_sigkilled_repeatedly_loses_and_doubles_nothing(
    broker: ManagedBroker, gateway_process, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    nodes, per_node = 4, 6000
    gw = gateway_process("--mqtt-url", broker.url)
    d = gw.data_dir
    gw.start()
    await wait_for(lambda: counter(d, "publishes") >= 0 and "connected to broker" in gw.log_text(),
                   what="gateway connected")
    publishers = [
        asyncio.create_task(publish_all(broker.port, f"pub{i}", _items(f"node{i}", per_node),
                                        window=20))
        for i in range(nodes)
    ]
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        # Kill while readings flow: once this run has stored some, so that some messages are
        # received, some committed but not yet acknowledged, and some acknowledged.
        before = max(counter(d, "stored"), 0)
        await wait_for(lambda before=before: counter(d, "stored") >= before + 300, timeout=30,
                       interval=0.01, what="ingest under way")
        await asyncio.sleep(rng.uniform(0, 0.05))
        gw.kill()
        kills += 1
        gw.start()
    assert counter(d, "stored") < nodes * per_node, "publishing finished before the last kill"
    await asyncio.gather(*publishers)
    await wait_for(lambda: counter(d, "stored") >= nodes * per_node, timeout=60,
                   what="every reading stored")
    await asyncio.sleep(0.5)  # anything redelivered late would show as a duplicate, not a row
    assert gw.terminate() == 0
    assert kills == 4
    _assert_exact(d, nodes, per_node)
    # The kills really interrupted ingest: the broker redelivered what was not acknowledged.
    assert gw.starts == 5
    # Redeliveries (killed after commit, before the PUBACK) are counted, never stored twice.
    assert counter(d, "messages") == counter(d, "stored") + counter(d, "duplicates")


async def test_broker_restarted_mid_ingest_loses_nothing(
    broker: ManagedBroker, gateway_process  # type: ignore[no-untyped-def]
) -> None:
    nodes, per_node = 3, 6000
    gw = gateway_process("--mqtt-url", broker.url)
    d = gw.data_dir
    gw.start()
    await wait_for(lambda: "connected to broker" in gw.log_text(), what="gateway connected")
    publishers = [
        # A small window: each publisher waits for its broker's PUBACKs, so publishing lasts
        # across both restarts instead of outrunning them.
        asyncio.create_task(publish_all(broker.port, f"pub{i}", _items(f"node{i}", per_node),
                                        window=2))
        for i in range(nodes)
    ]
    # The first restart once ingest is under way, the second soon after the broker is back;
    # both while the publishers still have work (asserted, so a faster machine fails loudly).
    await wait_for(lambda: counter(d, "stored") >= 200, timeout=30, interval=0.01,
                   what="ingest under way")
    for restart in range(2):
        if restart:
            await asyncio.sleep(0.3)
        assert not all(p.done() for p in publishers), "publishing finished before the restart"
        await broker.stop()  # SIGTERM: mosquitto saves what it queued
        await asyncio.sleep(0.3)
        await broker.start()
    troubles = await asyncio.gather(*publishers)
    assert sum(troubles) > 0  # the publishers did see the broker go away
    await wait_for(lambda: counter(d, "stored") >= nodes * per_node, timeout=60,
                   what="every reading stored")
    assert gw.terminate() == 0
    _assert_exact(d, nodes, per_node)


async def test_managed_broker_outlives_a_killed_gateway_and_queues_for_it(
    gateway_process, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    gw = gateway_process("--mqtt-port", str(port), "--log-level", "debug")
    d = gw.data_dir
    gw.start()
    await wait_for(lambda: "connected to broker" in gw.log_text(), what="gateway connected")
    record = json.loads((d / "broker" / "broker.json").read_text())
    gw.kill()
    os.kill(record["pid"], 0)  # the broker survived the SIGKILL
    # More than mosquitto's default max_queued_messages (1000) while the gateway is down.
    n = 3000
    assert await publish_all(port, "pub", _items("node0", n), window=50) == 0
    gw.start()
    await wait_for(lambda: counter(d, "stored") >= n, timeout=60, what="the backlog drained")
    assert "adopted the managed broker" in gw.log_text()
    assert gw.terminate() == 0
    _assert_exact(d, 1, n)
    # A clean stop takes the managed broker down with the gateway.
    await wait_for(lambda: not _alive(record["pid"]), what="broker stopped")


async def test_managed_broker_killed_is_restarted_and_keeps_its_queue(
    gateway_process, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Queued messages survive a broker SIGKILL once autosaved; the supervisor restarts it."""
    port = free_port()
    gw = gateway_process("--mqtt-port", str(port))
    d = gw.data_dir
    gw.start()
    await wait_for(lambda: "connected to broker" in gw.log_text(), what="gateway connected")
    gw.terminate()
    # Gateway stopped cleanly (its session persists in the broker's saved state); start the
    # broker alone by starting the gateway and killing only the gateway.
    gw.start()
    await wait_for(lambda: gw.log_text().count("connected to broker") >= 2)
    gw.kill()
    pid = json.loads((d / "broker" / "broker.json").read_text())["pid"]
    n = 1500
    assert await publish_all(port, "pub", _items("node0", n), window=50) == 0
    await asyncio.sleep(2.5)  # autosave_interval is 1 s
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: not _alive(pid), what="broker dead")
    gw.start()  # finds the broker dead and starts a fresh one on the saved persistence
    await wait_for(lambda: counter(d, "stored") >= n, timeout=60, what="queue restored")
    assert gw.terminate() == 0
    _assert_exact(d, 1, n)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

"""Upstream sync against real peers: TLS mosquitto with a password, and tansu (Kafka)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.broker.managed import ManagedBroker
from gateway.model import Message
from gateway.service import Gateway
from gateway.store.writer import StoreWriter, Unit
from tests.conftest import InProcessGateways, wait_for
from tests.gateway.helpers import count, publish_all, reading
from tests.sync.conftest import CloudBroker, MqttReader, Tansu

pytestmark = pytest.mark.integration


def mqtt_sink(cloud: CloudBroker, **extra: object) -> str:
    lines = ["[[sinks]]", 'name = "cloud"', 'type = "mqtt"', f'url = "{cloud.url}"',
             'topic = "roost/{gateway}/{node_id}/readings"', f'ca_file = "{cloud.tls.ca}"',
             "backoff_max_s = 1.0"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def kafka_sink(bootstrap: str, **extra: object) -> str:
    lines = ["[[sinks]]", 'name = "lake"', 'type = "kafka"', f'bootstrap = "{bootstrap}"',
             'topic = "roost.readings"', "backoff_max_s = 1.0"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def start_gateway(gateways: InProcessGateways):  # type: ignore[no-untyped-def]
    async def start(config: str, name: str = "gw1") -> Gateway:
        return await gateways.start(f'[gateway]\nname = "{name}"\n' + config)

    return start


async def stop(gw: Gateway) -> None:
    """Stop a gateway cleanly and wait for it (the fixture then finds it stopped)."""
    gw.stop()
    await wait_for(lambda: gw.writer is not None and gw.writer._conn is None, timeout=30,
                   what="gateway stopped")


def items(nodes: int, per_node: int, boot: int = 1) -> list[tuple[str, bytes]]:
    return [(f"roost/v1/node{n}/readings", reading(boot, s, temp_c=20 + s / 10, rh_pct=40.0))
            for s in range(per_node) for n in range(nodes)]


def sink_row(data: Path, name: str) -> tuple[int, int, int, str]:
    conn = sqlite3.connect(f"file:{data / 'roost.sqlite3'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT cursor, delivered, dead_letters, state FROM sink_cursors "
                           "WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return row if row else (0, 0, 0, "")


async def test_mqtt_sink_over_tls_delivers_everything_in_order(
    start_gateway, broker: ManagedBroker, cloud_broker: CloudBroker, mqtt_reader: MqttReader,
    tmp_path: Path,
) -> None:
    gw = await start_gateway(mqtt_sink(cloud_broker))
    await publish_all(broker.port, "pub", items(3, 200))
    await wait_for(lambda: len(mqtt_reader.got.distinct()) == 600, timeout=30, what="600 upstream")
    got = mqtt_reader.got
    assert got.in_order_per_node()
    body = got.payloads[0]
    assert set(body) == {"gateway", "node_id", "boot", "seq", "ts", "received", "flags", "m"}
    assert body["gateway"] == "gw1" and body["m"] == {"temp_c": 20.0, "rh_pct": 40.0}
    # The gateway's birth is retained upstream; a clean stop turns it to offline.
    assert json.loads(mqtt_reader.retained["roost/gw1/status"])["state"] == "online"
    await wait_for(lambda: sink_row(tmp_path / "data", "cloud")[0] > 0)
    await stop(gw)
    await wait_for(lambda: json.loads(mqtt_reader.retained["roost/gw1/status"])["state"]
                   == "offline", what="offline status")
    cursor, delivered, dead, _ = sink_row(tmp_path / "data", "cloud")
    assert delivered == 600 and dead == 0
    assert cursor == count(tmp_path / "data", "SELECT max(id) FROM messages")
    # The sync state as `roost stats` shows it.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gateway", "stats", "--json", "--data-dir",
                          str(tmp_path / "data")], capture_output=True, text=True, check=True)
    (sink,) = json.loads(out.stdout)["sinks"]
    assert (sink["name"], sink["type"], sink["delivered"], sink["backlog"]) == (
        "cloud", "mqtt", 600, 0)


async def test_kafka_sink_keys_headers_and_order(
    start_gateway, broker: ManagedBroker, tansu: Tansu, kafka_reader: Callable, tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    gw = await start_gateway(kafka_sink(tansu.bootstrap))
    reader = kafka_reader(tansu.bootstrap)
    await publish_all(broker.port, "pub", items(4, 250))
    await wait_for(lambda: len(reader.got.distinct()) == 1000, timeout=60, what="1000 in kafka")
    got = reader.got
    assert got.in_order_per_node()
    for body, key, headers in zip(got.payloads, got.keys, got.headers, strict=True):
        assert key == body["node_id"].encode()
        assert headers == {"node_id": key, "boot": str(body["boot"]).encode(),
                           "seq": str(body["seq"]).encode()}
    await stop(gw)


async def test_targets_down_at_start_then_up(
    start_gateway, broker: ManagedBroker, cloud_broker: CloudBroker, tmp_path: Path,
    kafka_reader: Callable,  # type: ignore[type-arg]
) -> None:
    cloud_broker.stop()
    tansu = Tansu(tmp_path / "late-tansu")
    gw = await start_gateway(mqtt_sink(cloud_broker) + kafka_sink(tansu.bootstrap))
    await publish_all(broker.port, "pub", items(2, 300))
    await wait_for(lambda: all(r.state.state == "backoff" for r in gw.sinks), what="backoff")
    assert all(r.state.last_error for r in gw.sinks)
    cloud_broker.start()
    tansu.start()
    try:
        reader = MqttReader(cloud_broker, "roost/+/+/readings")
        await reader.start()
        k = kafka_reader(tansu.bootstrap)
        await wait_for(lambda: len(reader.got.distinct()) == 600 and len(k.got.distinct()) == 600,
                       timeout=60, what="both drained")
        assert reader.got.in_order_per_node() and k.got.in_order_per_node()
        assert all(r.state.state == "online" for r in gw.sinks)
        await reader.stop()
        await stop(gw)
    finally:
        tansu.stop()


async def test_cloud_broker_restarted_mid_drain(
    start_gateway, broker: ManagedBroker, cloud_broker: CloudBroker, mqtt_reader: MqttReader,
    tmp_path: Path,
) -> None:
    n = 4000
    gw = await start_gateway(mqtt_sink(cloud_broker, rate_limit_rps=2000, batch_size=200))
    await publish_all(broker.port, "pub", items(4, n // 4))
    await wait_for(lambda: len(mqtt_reader.got.distinct()) > 500, timeout=30)
    cloud_broker.stop()  # mid-drain; it saves what it queued for the reader's session
    await asyncio.sleep(0.5)
    cloud_broker.start()
    await wait_for(lambda: len(mqtt_reader.got.distinct()) == n, timeout=60, what="all delivered")
    got = mqtt_reader.got
    assert got.in_order_per_node()
    duplicates = len(got.items) - n
    assert duplicates <= 200 * 2  # at most the batch in flight at the cut (and its resend)
    await stop(gw)


async def test_kafka_killed_mid_drain_and_restarted(
    start_gateway, broker: ManagedBroker, tmp_path: Path, kafka_reader: Callable,  # type: ignore[type-arg]
) -> None:
    tansu = Tansu(tmp_path / "tansu")
    port = tansu.port
    tansu.start()
    try:
        n = 3000
        gw = await start_gateway(kafka_sink(tansu.bootstrap, rate_limit_rps=1500, batch_size=100))
        (runner,) = gw.sinks
        await publish_all(broker.port, "pub", items(3, n // 3))
        await wait_for(lambda: runner.state.cursor > 800, timeout=30)
        tansu.stop(signal.SIGKILL)  # its memory storage dies with it
        await wait_for(lambda: runner.state.state == "backoff", timeout=30)
        # Read only now: an acknowledgement the dead broker had already written to the socket
        # is still delivered, and moves the cursor past records that died with its memory.
        # (Read right after the kill, before the loop ran, the test failed once in CI.)
        at_kill = runner.state.cursor
        tansu = Tansu(tmp_path / "tansu2")
        tansu.port = port
        tansu.start()
        reader = kafka_reader(tansu.bootstrap)
        await wait_for(lambda: runner.state.cursor == count(tmp_path / "data",
                                                            "SELECT max(id) FROM messages"),
                       timeout=60, what="drained after restart")
        await wait_for(lambda: len(reader.got.distinct()) >= n - at_kill, timeout=30)
        # Everything after the cursor at the kill reached the new broker, in order per node.
        ids_after = count(tmp_path / "data", "SELECT count(*) FROM messages WHERE id > ?", at_kill)
        assert len(reader.got.distinct()) >= ids_after
        assert reader.got.in_order_per_node()
        await stop(gw)
    finally:
        tansu.stop()


@pytest.mark.parametrize("link", ["plain", "tls"])
async def test_permanent_error_goes_to_dead_letters_and_the_rest_flows(
    start_gateway, broker: ManagedBroker, cloud_broker: CloudBroker, mqtt_reader: MqttReader,
    tmp_path: Path, link: str,
) -> None:
    """The cloud's ACL refuses one node's topic. Over plain MQTT 5 mosquitto answers 0x87. Over
    TLS mosquitto 2.0.11 also drops the connection, losing the other PUBACKs in flight: the
    runner then isolates the message that breaks the link and dead-letters it."""
    config = mqtt_sink(cloud_broker)
    if link == "plain":
        config = config.replace(cloud_broker.url, cloud_broker.plain_url)
    gw = await start_gateway(config)
    blocked = (0, 25) if link == "tls" else (0, 10, 20, 30, 40)
    mixed = []
    for s in range(50):
        mixed.append(("roost/v1/good/readings", reading(1, s)))
        if s in blocked:
            mixed.append(("roost/v1/blocked/readings", reading(1, s)))
    await publish_all(broker.port, "pub", mixed)
    await wait_for(lambda: len(mqtt_reader.got.distinct()) == 50, timeout=60)
    data = tmp_path / "data"
    await wait_for(lambda: sink_row(data, "cloud")[2] == len(blocked), what="dead letters")
    conn = sqlite3.connect(data / "roost.sqlite3")
    rows = conn.execute("SELECT node_id, seq, reason FROM dead_letters ORDER BY seq").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("blocked", s) for s in blocked]
    assert all("0x87" in r[2] for r in rows), rows
    assert {i[0] for i in mqtt_reader.got.items} == {"good"}
    assert mqtt_reader.got.in_order_per_node()
    await stop(gw)


async def test_gateway_sigkilled_mid_drain(
    broker: ManagedBroker, cloud_broker: CloudBroker, mqtt_reader: MqttReader, tmp_path: Path,
    gateway_process,  # type: ignore[no-untyped-def]
) -> None:
    n, batch = 6000, 100
    cfg = tmp_path / "roost.toml"
    cfg.write_text('[gateway]\nname = "gw1"\n' + mqtt_sink(cloud_broker, rate_limit_rps=1000,
                                                           batch_size=batch))
    gw = gateway_process("--config", str(cfg), "--mqtt-url", broker.url)
    gw.start()
    await wait_for(lambda: "connected to broker" in gw.log_text(), what="gateway connected")
    await publish_all(broker.port, "pub", items(3, n // 3))
    kills = 0
    for _ in range(2):
        before = len(mqtt_reader.got.distinct())
        await wait_for(lambda b=before: len(mqtt_reader.got.distinct()) > b + 300, timeout=60,
                       what=f"300 more than {before}")
        gw.kill()
        kills += 1
        gw.start()
    assert len(mqtt_reader.got.distinct()) < n, "the drain ended before the last kill"
    await wait_for(lambda: len(mqtt_reader.got.distinct()) == n, timeout=90, what="all delivered")
    # SIGTERM only once the last start installed its handlers (an earlier start may have been
    # killed before it logged it: the sinks deliver before the API is up).
    await wait_for(
        lambda: "gateway 'gw1' running" in gw.log_text().rsplit("roost: settings from", 1)[-1],
        what="the last start running",
    )
    assert gw.terminate() == 0
    got = mqtt_reader.got
    assert got.in_order_per_node()
    assert len(got.items) - n <= kills * batch  # duplicates: only the unrecorded batch per kill


async def test_backlog_of_100k_drains_in_order_with_live_share(
    broker: ManagedBroker, tansu: Tansu, tmp_path: Path, start_gateway,  # type: ignore[no-untyped-def]
    kafka_reader: Callable,  # type: ignore[type-arg]
) -> None:
    data = tmp_path / "data"
    w = StoreWriter(data / "roost.sqlite3")
    await w.open()
    n, nodes = 100_000, 20
    for start in range(0, n, 5000):
        msgs = [Message(f"node{i % nodes}", 1, i // nodes, 1_763_812_345_000 + i, None,
                        (("temp_c", 20.0 + i % 7),)) for i in range(start, start + 5000)]
        await w._commit_with_retry([Unit(msgs, 1_763_812_400_000)])
    await w.close()
    reader = kafka_reader(tansu.bootstrap)
    gw = await start_gateway(kafka_sink(tansu.bootstrap, batch_size=2000, live_share=0.25))
    (runner,) = gw.sinks
    # Live readings published while the backlog drains reach Kafka before the backlog ends.
    live = [("roost/v1/live/readings", reading(1, s)) for s in range(20)]
    await wait_for(lambda: runner.state.live_from is not None, what="live stream opened")
    await publish_all(broker.port, "pub", live)
    await wait_for(lambda: len(reader.got.distinct()) == n + 20, timeout=120, what="drained")
    got = reader.got
    first_live = next(i for i, item in enumerate(got.items) if item[0] == "live")
    last_backlog = max(i for i, item in enumerate(got.items) if item[0] != "live")
    assert first_live < last_backlog
    assert got.in_order_per_node()
    assert runner.state.live_from is None  # merged back into one stream
    await stop(gw)

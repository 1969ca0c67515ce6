"""Live-feed latency and series-query benchmark: prints JSON figures with their baselines.

1. Publish -> WebSocket latency. ``roost run`` (its managed mosquitto) runs as a child process; a
   publisher process sends v1 reading messages at ``--rate`` per second (QoS1), each carrying its
   send time (``time.time()``) as a metric. In this process, a WebSocket client on ``/ws/live``
   and, as the floor, a bare MQTT subscriber (QoS0, no storage) on the same broker measure
   publish -> receive. The gateway's path is: broker -> ingest -> SQLite commit (synchronous=FULL)
   -> commit listener -> WebSocket frame.
2. ``/api/series`` over 30 days of one node's data bucketed by the hour, p50/p95 over repeated
   requests, for two densities (a reading per minute, and per 10 s).

Usage: python bench/latency.py [--rate 1000] [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from gateway.mqtt.client import Connection, ConnectOptions  # noqa: E402
from gateway.store import schema  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def summary(ms: list[float]) -> dict[str, float | int]:
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


# -- 1. publish -> receive ----------------------------------------------------------------------


async def publisher(port: int, rate: int, seconds: float) -> None:
    """Paced QoS1 publishing: one tick per millisecond-ish, as many messages as are due."""
    conn = await Connection.open(ConnectOptions("127.0.0.1", port, "bench-pub", clean_start=True,
                                                session_expiry=0))
    n = int(rate * seconds)
    start = time.perf_counter()
    pending: set[asyncio.Future[object]] = set()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        body = b'{"b":1,"s":%d,"u":%d,"m":{"sent_s":%.6f,"temp_c":21.5}}' % (i, i, time.time())
        fut = asyncio.ensure_future(conn.publish(f"roost/v1/bench{i % 10}/readings", body, qos=1))
        pending.add(fut)
        fut.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    await conn.close()


async def ws_receiver(
    base: str, out: list[float], stop: asyncio.Event, to_gateway: list[float] | None = None
) -> None:
    """Publish -> frame received, per message; ``to_gateway`` gets publish -> gateway receive
    (the message's ``received``, whole milliseconds), the part before the store writer."""
    async with connect(f"{base}/ws/live?backfill=0&metric=sent_s", max_size=None) as ws:
        await ws.recv()  # the (empty) backfill
        while not stop.is_set():
            try:
                async with asyncio.timeout(0.5):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            now = time.time()
            for m in json.loads(raw).get("data", []):
                sent = m["metrics"]["sent_s"]
                out.append((now - sent) * 1000)
                if to_gateway is not None:
                    to_gateway.append(m["received"] - sent * 1000)


async def bare_receiver(port: int, out: list[float], stop: asyncio.Event) -> None:
    conn = await Connection.open(ConnectOptions("127.0.0.1", port, "bench-bare", clean_start=True,
                                                session_expiry=0))
    await conn.subscribe([("roost/v1/+/readings", 0)])
    while not stop.is_set():
        try:
            async with asyncio.timeout(0.5):
                batch = await conn.messages()
        except TimeoutError:
            continue
        now = time.time()
        for p in batch:
            out.append((now - json.loads(p.payload)["m"]["sent_s"]) * 1000)
    await conn.close()


def fsync_probe(folder: Path, stop: threading.Event, out: list[float]) -> None:
    """The disk's own floor in the same run: 4 KB appended and fsynced every 3 ms (about what
    the writer does at 1,000 readings/s with synchronous=FULL) while the measurement runs. The
    host's occasional stalls of hundreds of milliseconds show here as they do in the feed."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while not stop.is_set():
            os.write(fd, b"\0" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            out.append((time.perf_counter() - t0) * 1000)
            stop.wait(0.003)
    finally:
        os.close(fd)
        path.unlink()


async def latency(rate: int, seconds: float) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    http, mqtt = free_port(), free_port()
    log = (tmp / "gateway.log").open("wb")
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--data-dir", str(tmp / "data"), "--mqtt-port",
         str(mqtt), "--http-host", "127.0.0.1", "--http-port", str(http), "--log-level", "warning"],
        stdout=log, stderr=log, cwd=tmp,
    )
    base = f"http://127.0.0.1:{http}"
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(base + "/api/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        ws_ms: list[float] = []
        gw_ms: list[float] = []
        bare_ms: list[float] = []
        stop = asyncio.Event()
        tasks = [asyncio.create_task(ws_receiver(base.replace("http", "ws"), ws_ms, stop, gw_ms)),
                 asyncio.create_task(bare_receiver(mqtt, bare_ms, stop))]
        await asyncio.sleep(0.5)
        fsync_ms: list[float] = []
        probe_stop = threading.Event()
        probe = threading.Thread(target=fsync_probe, args=(tmp, probe_stop, fsync_ms))
        probe.start()
        pub = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publisher", str(mqtt), str(rate), str(seconds))
        await pub.wait()
        probe_stop.set()
        probe.join()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        warm = int(rate * 1.0)  # the first second warms caches and connections
        return {
            "rate_per_s": rate,
            "seconds": seconds,
            "sent": int(rate * seconds),
            "websocket": summary(ws_ms[warm:]),
            # Of which publish -> ingest's receive stamp (ms resolution): the rest is the
            # store writer (gathering, commit) and the fan-out.
            "websocket_publish_to_gateway_receive": summary(gw_ms[warm:]),
            "baseline_bare_subscriber": summary(bare_ms[warm:]),
            # The disk in the same window: a stall here explains one in the feed (readings
            # are pushed only after their commit is on disk).
            "disk_fsync_4k": {**summary(fsync_ms), "stalls_over_50_ms": sum(
                1 for x in fsync_ms if x > 50)},
            "target_p99_ms": 10,
        }
    finally:
        gw.terminate()
        gw.wait(30)
        log.close()


# -- 2. /api/series -----------------------------------------------------------------------------


def make_store(data_dir: Path, step_s: int, days: int = 30) -> int:
    """One node's ``days`` of two metrics every ``step_s``, written straight into a new store."""
    data_dir.mkdir(parents=True)
    conn = schema.connect(str(data_dir / "roost.sqlite3"), synchronous="normal")
    schema.migrate(conn)
    now = int(time.time() * 1000)
    start = now - days * 86_400_000
    n = days * 86_400 // step_s
    conn.execute("BEGIN")
    conn.execute("INSERT INTO nodes (node_ref, node_id, first_seen, last_seen) "
                 "VALUES (1, 'n', ?, ?)",
                 (start, now))
    conn.executemany("INSERT INTO metrics VALUES (?, ?)", [(1, "temp_c"), (2, "rh_pct")])
    conn.executemany(
        "INSERT INTO messages (id, node_ref, boot, seq, ts, received, flags) "
        "VALUES (?,1,1,?,?,?,0)",
        ((i + 1, i, start + i * step_s * 1000, start + i * step_s * 1000) for i in range(n)))
    conn.executemany("INSERT INTO readings VALUES (?, ?, ?)",
                     ((i + 1 + 0 * k, k, 20.0 + (i % 100) / 10) for i in range(n) for k in (1, 2)))
    # What the rollup records for every closed hour (catalog row, hour_stats), as SQL here so
    # the figure is the query's, not pyarrow's: long-range hourly series read these.
    conn.execute(
        "INSERT INTO parquet_hours (hour, path, rows, bytes, sha256, max_id, rolled_at) "
        "SELECT m.ts - m.ts % 3600000 AS h, 'bench', count(*), 1, '', max(m.id), ? "
        "FROM messages m WHERE m.ts < ? - ? % 3600000 GROUP BY h",
        (now, now, now))
    conn.execute(
        "INSERT INTO hour_stats SELECT m.node_ref, r.metric_ref, m.ts - m.ts % 3600000 AS h, "
        "count(*), sum(r.value), min(r.value), max(r.value) FROM messages m "
        "JOIN readings r ON r.message_id = m.id WHERE m.ts < ? - ? % 3600000 GROUP BY 1, 2, 3",
        (now, now))
    conn.execute("INSERT INTO rollup_state VALUES ('scanned_id', ?)", (n,))
    conn.execute("COMMIT")
    conn.close()
    return n


async def series_query(step_s: int, repeats: int) -> dict[str, object]:
    from gateway.api.server import ApiServer
    from gateway.config import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-series-"))
    n = make_store(tmp / "data", step_s)
    port = free_port()
    settings, _ = load_settings(None, overrides={"gateway": {"data_dir": str(tmp / "data")},
                                                 "http": {"host": "127.0.0.1", "port": port}},
                                env={}, search=())
    api = ApiServer(settings, tmp / "data")
    task = asyncio.create_task(api.serve())
    await api.bound.wait()
    times = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        params = {"node": "n", "metric": "temp_c", "start": "-30d", "bucket": "1h"}
        body = (await c.get("/api/series", params=params)).json()  # warm the page cache
        points = len(body["series"][0]["t"])
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = await c.get("/api/series", params=params)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
        # The floor: the same aggregate in sqlite3 directly, no HTTP, no JSON.
        conn = sqlite3.connect(f"file:{tmp / 'data' / 'roost.sqlite3'}?mode=ro", uri=True)
        raw = []
        for _ in range(max(5, repeats // 4)):
            t0 = time.perf_counter()
            conn.execute(
                "SELECT m.ts / 3600000, avg(r.value), min(r.value), max(r.value), count(*) "
                "FROM messages m CROSS JOIN readings r ON r.message_id = m.id "
                "WHERE m.node_ref = 1 AND m.ts >= ? AND r.metric_ref = 1 GROUP BY 1",
                (int(time.time() * 1000) - 30 * 86_400_000,)).fetchall()
            raw.append((time.perf_counter() - t0) * 1000)
        # The floor of the path the API takes: the same aggregate from hour_stats alone.
        agg = []
        for _ in range(max(5, repeats // 4)):
            t0 = time.perf_counter()
            conn.execute(
                "SELECT hour, sum / n, min, max, n FROM hour_stats "
                "WHERE node_ref = 1 AND metric_ref = 1 AND hour >= ?",
                (int(time.time() * 1000) - 30 * 86_400_000,)).fetchall()
            agg.append((time.perf_counter() - t0) * 1000)
        conn.close()
    await api.stop()
    await task
    api.close()
    return {
        "messages": n,
        "interval_s": step_s,
        "points": points,
        "p50_ms": round(pct(times, 50), 2),
        "p95_ms": round(pct(times, 95), 2),
        "baseline_sqlite_query_p50_ms": round(pct(raw, 50), 2),
        "baseline_hour_stats_query_p50_ms": round(pct(agg, 50), 2),
        "target_p95_ms": 50,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--publisher", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.publisher:
        port, rate, seconds = a.publisher
        await publisher(int(port), int(rate), float(seconds))
        return
    if a.quick:
        a.seconds, a.repeats = 4.0, 10
    out = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "live_latency": await latency(a.rate, a.seconds),
        "series_30d_hourly": [await series_query(60, a.repeats),
                              await series_query(10, a.repeats)],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())

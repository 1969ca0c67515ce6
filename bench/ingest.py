"""Ingest benchmark: prints JSON figures, baselines measured in the same run.

For one stream of v1 reading messages (two metrics each, QoS1, from several publishers):

  a. ``mosquitto_sub`` draining it (C client, no storage): the broker's own ceiling;
  b. a bare gmqtt subscriber that acks after an empty async handler: the Python-client ceiling;
  c. Roost's durable ingest (``roost run``): committed to SQLite, then acknowledged.

Each is measured draining a backlog queued for its persistent session ("backlog") and with the
publishers running at the same time ("live"). Ratios c/a and c/b are printed, plus the gateway's
RSS at a steady 1,000 messages/s and the store's synchronous=FULL vs NORMAL rates.

Usage: python bench/ingest.py [--messages 100000] [--publishers 4] [--nodes 40] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.broker.managed import ManagedBroker, find_mosquitto  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stream(nodes: int, messages: int) -> list[list[bytes]]:
    """Per node, its lines of v1 JSON (seq contiguous), two metrics each."""
    per_node = [[] for _ in range(nodes)]  # type: list[list[bytes]]
    t0 = 1_763_812_345_000
    for i in range(messages):
        n = i % nodes
        seq = len(per_node[n])
        per_node[n].append(
            b'{"b":1,"s":%d,"t":%d,"u":%d,"m":{"temp_c":%.1f,"rh_pct":%.1f}}'
            % (seq, t0 + seq * 1000, seq * 1000, 20 + (seq % 37) / 10, 40 + (seq % 53) / 10)
        )
    return per_node


def publish(port: int, per_node: list[list[bytes]], publishers: int) -> float:
    """Publish with ``publishers`` mosquitto_pub processes (QoS1); returns seconds taken."""
    pub = "mosquitto_pub"
    procs = []
    start = time.perf_counter()
    groups: list[list[int]] = [list(range(i, len(per_node), publishers)) for i in range(publishers)]
    for gi, group in enumerate(groups):
        for n in group:
            p = subprocess.Popen(
                [pub, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-l",
                 "-i", f"bench-pub-{gi}-{n}", "-t", f"roost/v1/node{n:03d}/readings"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            procs.append((p, n))
    # Feed all publishers concurrently: one writer thread per process would be overkill;
    # each gets its whole input at once (mosquitto_pub -l reads line by line).
    import threading

    def feed(p: subprocess.Popen[bytes], n: int) -> None:
        assert p.stdin is not None
        p.stdin.write(b"\n".join(per_node[n]) + b"\n")
        p.stdin.close()

    threads = [threading.Thread(target=feed, args=pn) for pn in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p, _ in procs:
        p.wait()
    return time.perf_counter() - start


# --- a: mosquitto_sub ---------------------------------------------------------------------------

def sub_mosquitto(port: int, n: int, client_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c", "-i", client_id,
         "-t", "roost/v1/+/readings", "-C", str(n), "-V", "mqttv5", "-x", "3600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def make_session_mosquitto(port: int, client_id: str) -> None:
    subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c", "-i", client_id,
         "-t", "roost/v1/+/readings", "-V", "mqttv5", "-x", "3600", "-W", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )


# --- b: bare gmqtt ------------------------------------------------------------------------------

GMQTT_SUB = r"""
import asyncio, sys, time
import gmqtt
from gmqtt.mqtt.constants import MQTTv50
port, n, cid, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
async def main():
    done = asyncio.Event()
    count = 0
    first = None
    async def on_message(client, topic, payload, qos, props):
        nonlocal count, first
        if first is None:
            first = time.perf_counter()
        count += 1
        if count >= n:
            done.set()
        return 0
    c = gmqtt.Client(cid, clean_session=False, optimistic_acknowledgement=False,
                     session_expiry_interval=3600, receive_maximum=65535)
    c.on_message = on_message
    await c.connect("127.0.0.1", port, version=MQTTv50)
    c.subscribe("roost/v1/+/readings", qos=1)
    print("ready", flush=True)
    if mode == "session":
        await asyncio.sleep(0.5)
        await c.disconnect()
        return
    await done.wait()
    end = time.perf_counter()
    print(f"{first} {end}", flush=True)
    await c.disconnect()
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
asyncio.run(main())
"""


def run_gmqtt(port: int, n: int, cid: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", GMQTT_SUB, str(port), str(n), cid, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


# --- c: roost ---------------------------------------------------------------------------------

class Roost:
    def __init__(self, port: int, data_dir: Path, synchronous: str = "full") -> None:
        self.port = port
        self.data_dir = data_dir
        self.env = {
            **os.environ, "ROOST_STORE_SYNCHRONOUS": synchronous, "ROOST_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = free_port()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--mqtt-url", f"mqtt://127.0.0.1:{self.port}",
             "--data-dir", str(self.data_dir), "--http-host", "127.0.0.1",
             "--http-port", str(self.http_port)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def stored(self) -> int:
        db = self.data_dir / "roost.sqlite3"
        if not db.exists():
            return 0
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                row = conn.execute("SELECT value FROM counters WHERE name='messages'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0

    def counter(self, name: str) -> int:
        db = self.data_dir / "roost.sqlite3"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        finally:
            conn.close()
        return int(row[0]) if row else 0

    def write_bytes(self) -> int:
        """What the gateway process caused to be written to storage (``/proc/PID/io``)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        return 0

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def wait_connected(self) -> None:
        # The store exists once the gateway migrated it; the session exists once it subscribed.
        deadline = time.time() + 30
        while time.time() < deadline:
            if (self.data_dir / "roost.sqlite3").exists():
                time.sleep(0.5)
                return
            time.sleep(0.05)
        raise RuntimeError("roost did not start")


def wait_count(fn, n: int, timeout: float = 600) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Poll until fn() >= n; returns (time the count first moved, time it reached n)."""
    first = None
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        c = fn()
        now = time.perf_counter()
        if c > 0 and first is None:
            first = now
        if c >= n:
            return first or now, now
        time.sleep(0.005)
    raise RuntimeError(f"timed out at {fn()} of {n}")


def bench(args: argparse.Namespace) -> dict[str, object]:
    find_mosquitto()
    per_node = stream(args.nodes, args.messages)
    n = args.messages
    results: dict[str, object] = {
        "messages": n, "metrics_per_message": 2, "publishers": args.publishers, "nodes": args.nodes,
    }
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as tmp:
        root = Path(tmp)

        async def with_broker(name: str):  # type: ignore[no-untyped-def]
            b = ManagedBroker(root / name, port=free_port(), bind="127.0.0.1")
            await b.start()
            return b

        def run(coro):  # type: ignore[no-untyped-def]
            return asyncio.run(coro)

        # a. mosquitto_sub, backlog and live.
        for mode in ("backlog", "live"):
            b = run(with_broker(f"a-{mode}"))
            try:
                cid = f"bench-a-{mode}"
                if mode == "backlog":
                    make_session_mosquitto(b.port, cid)
                    publish(b.port, per_node, args.publishers)
                    t0 = time.perf_counter()
                    sub = sub_mosquitto(b.port, n, cid)
                    sub.wait(600)
                    secs = time.perf_counter() - t0
                else:
                    sub = sub_mosquitto(b.port, n, cid)
                    time.sleep(0.3)
                    t0 = time.perf_counter()
                    publish(b.port, per_node, args.publishers)
                    sub.wait(600)
                    secs = time.perf_counter() - t0
                results[f"a_mosquitto_sub_{mode}_msgs_per_s"] = round(n / secs)
            finally:
                run(b.stop())

        # b. bare gmqtt subscriber acking after an empty async handler.
        for mode in ("backlog", "live"):
            b = run(with_broker(f"b-{mode}"))
            try:
                cid = f"bench-b-{mode}"
                if mode == "backlog":
                    s = run_gmqtt(b.port, n, cid, "session")
                    s.wait(30)
                    publish(b.port, per_node, args.publishers)
                    t0 = time.perf_counter()
                    sub = run_gmqtt(b.port, n, cid, "count")
                    out, _ = sub.communicate(timeout=600)
                    secs = time.perf_counter() - t0
                else:
                    sub = run_gmqtt(b.port, n, cid, "count")
                    assert sub.stdout is not None
                    sub.stdout.readline()
                    t0 = time.perf_counter()
                    publish(b.port, per_node, args.publishers)
                    out, _ = sub.communicate(timeout=600)
                    secs = time.perf_counter() - t0
                first, end = map(float, out.split()[-2:])
                results[f"b_gmqtt_{mode}_msgs_per_s"] = round(n / secs)
                results[f"b_gmqtt_{mode}_msgs_per_s_excl_startup"] = round(n / (end - first))
            finally:
                run(b.stop())

        # c. roost, synchronous FULL (the default) and NORMAL.
        for sync in ("full", "normal") if not args.quick else ("full",):
            for mode in ("backlog", "live"):
                b = run(with_broker(f"c-{sync}-{mode}"))
                r = Roost(b.port, root / f"c-{sync}-{mode}-data", sync)
                try:
                    r.start()
                    r.wait_connected()
                    if mode == "backlog":
                        r.stop()
                        publish(b.port, per_node, args.publishers)
                        t0 = time.perf_counter()
                        r.start()
                        first, end = wait_count(r.stored, n)
                        secs = end - t0
                        results[f"c_roost_{sync}_{mode}_msgs_per_s_excl_startup"] = round(
                            n / (end - first)
                        )
                    else:
                        t0 = time.perf_counter()
                        publish(b.port, per_node, args.publishers)
                        _, end = wait_count(r.stored, n)
                        secs = end - t0
                    results[f"c_roost_{sync}_{mode}_msgs_per_s"] = round(n / secs)
                finally:
                    r.stop()
                    run(b.stop())

        # RSS at a steady 1,000 messages/s.
        b = run(with_broker("rss"))
        r = Roost(b.port, root / "rss-data")
        try:
            r.start()
            r.wait_connected()
            rss = steady_rate_rss(b.port, r, rate=1000, seconds=args.rss_seconds)
            results.update({f"rss_{k}" if k.startswith("steady") else k: v for k, v in rss.items()})
            # A quiet gateway (every message its own transaction): what wear costs there.
            low = steady_rate_rss(b.port, r, rate=args.low_rate, seconds=args.rss_seconds,
                                  nodes="quiet")
            results[f"bytes_written_per_reading_at_{args.low_rate}_msgs_per_s"] = low[
                "bytes_written_per_reading"]
            results["bytes_written_per_reading_at_1000_msgs_per_s"] = results.pop(
                "bytes_written_per_reading")
        finally:
            r.stop()
            run(b.stop())

    def ratio(c: str, base: str) -> float | None:
        cv, bv = results.get(c), results.get(base)
        if isinstance(cv, int) and isinstance(bv, int) and bv:
            return round(cv / bv, 3)
        return None

    for mode in ("backlog", "live"):
        results[f"ratio_c_over_a_{mode}"] = ratio(
            f"c_roost_full_{mode}_msgs_per_s", f"a_mosquitto_sub_{mode}_msgs_per_s")
        results[f"ratio_c_over_b_{mode}"] = ratio(
            f"c_roost_full_{mode}_msgs_per_s", f"b_gmqtt_{mode}_msgs_per_s")
    results["targets"] = {"ratio_c_over_a": ">= 0.6", "c_msgs_per_s": ">= 25000",
                          "rss_mb_at_1000_msgs_per_s": "<= 60"}
    return results


def steady_rate_rss(
    port: int, r: Roost, rate: int, seconds: float, nodes: str = "steady"
) -> dict[str, object]:
    from gateway.mqtt.client import Connection, ConnectOptions

    async def go() -> dict[str, object]:
        conn = await Connection.open(ConnectOptions("127.0.0.1", port, "bench-steady",
                                                    clean_start=True, session_expiry=0))
        samples: list[int] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        tick = 0.01
        pending: set[asyncio.Task[None]] = set()
        while loop.time() - start < seconds:
            due = int((loop.time() - start) * rate)
            while sent < due:
                payload = b'{"b":1,"s":%d,"u":%d,"m":{"temp_c":21.5,"rh_pct":40.1}}' % (sent, sent)
                topic = f"roost/v1/{nodes}{sent % 50}/readings"
                t = asyncio.create_task(conn.publish(topic, payload))
                pending.add(t)
                t.add_done_callback(pending.discard)
                sent += 1
            if int((loop.time() - start) / 0.5) > len(samples):
                samples.append(r.rss_kb())
            await asyncio.sleep(tick)
        await asyncio.gather(*pending)
        await conn.close()
        return {"sent": sent, "samples": samples}

    msgs0, rows0, bytes0 = r.counter("messages"), r.counter("rows"), r.write_bytes()
    out = asyncio.run(go())
    sent = out["sent"]
    assert isinstance(sent, int)
    wait_count(lambda: r.counter("messages"), msgs0 + sent, timeout=60)
    rows, written = r.counter("rows") - rows0, r.write_bytes() - bytes0
    samples = out["samples"]
    assert isinstance(samples, list)
    tail = samples[len(samples) // 2:] or samples
    return {
        "steady_rate_msgs_per_s": rate,
        "rss_mb_max": round(max(samples) / 1024, 1) if samples else None,
        "rss_mb_median_second_half": (
            round(sorted(tail)[len(tail) // 2] / 1024, 1) if tail else None
        ),
        # SD-card wear: WAL frames, checkpoints and everything else the gateway wrote.
        "bytes_written_per_reading": round(written / rows) if rows else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=40)
    ap.add_argument("--rss-seconds", type=float, default=10.0)
    ap.add_argument("--low-rate", type=int, default=50, help="the low rate for bytes/reading")
    ap.add_argument("--quick", action="store_true", help="FULL only (skip NORMAL)")
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(bench(args), indent=2))


if __name__ == "__main__":
    main()

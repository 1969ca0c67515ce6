"""Benchmark: reading pruned hours back through the API (hot vs cold). Prints JSON.

    python bench/cold.py [--hours 6] [--nodes 3]

``--nodes`` nodes x 2 metrics every 10 s for ``--hours`` closed hours go through the real store
writer and the real rollup. The API runs in its own process (``ApiServer`` over the data dir,
read-only), so its RSS is the gateway's API share. Measured twice in the same run on the same
rows: while they are hot (rolled, not pruned: the baseline), then after retention pruned them
so they live only in Parquet: ``/api/readings`` first page (time to first row), a 5-minute
``/api/series`` over the range, the CSV export's first byte and whole body, the API process's
RSS before and after, whether pyarrow ever got mapped into it, the reader process's RSS, the
same queries again while the reader is still up, and that it is gone after its idle time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.config import load_settings  # noqa: E402
from gateway.model import Message  # noqa: E402
from gateway.rollup.hours import HOUR_MS, hour_of  # noqa: E402
from gateway.rollup.scheduler import Rollup  # noqa: E402
from gateway.store.writer import StoreWriter, Unit, now_ms  # noqa: E402

SERVE = """
import asyncio, sys
from pathlib import Path
import uvloop
from gateway.api.server import ApiServer
from gateway.config import load_settings
data, port = Path(sys.argv[1]), int(sys.argv[2])
s, _ = load_settings(None, overrides={"gateway": {"data_dir": str(data)},
                     "http": {"host": "127.0.0.1", "port": port}}, env={}, search=())
# As `roost run` serves it: on uvloop.
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
    r.run(ApiServer(s, data).serve())
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    # Per thread: the reader is started from an API read thread, not the main one.
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (t / "children").read_text().split()]


def has_arrow(pid: int) -> bool:
    return "libarrow" in Path(f"/proc/{pid}/maps").read_text()


async def measure(base: str, start: int, end: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, timeout=300) as c:
        t0 = time.perf_counter()
        r = await c.get("/api/readings", params={"start": start, "end": end, "limit": 1000})
        out["readings_first_page_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        assert r.status_code == 200 and len(r.json()["readings"]) == 1000, r.text[:300]
        t0 = time.perf_counter()
        r = await c.get("/api/series", params={"start": start, "end": end, "bucket": "5m"})
        out["series_5m_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        t0 = time.perf_counter()
        r = await c.get("/api/series", params={"start": start, "end": end, "bucket": "1h"})
        out["series_1h_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        t0 = time.perf_counter()
        first = None
        size = 0
        async with c.stream("GET", "/api/export", params={"start": start, "end": end}) as s:
            async for chunk in s.aiter_bytes():
                if first is None:
                    first = time.perf_counter() - t0
                size += len(chunk)
        out["export_csv_first_byte_ms"] = round((first or 0) * 1000, 1)
        out["export_csv_total_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out["export_csv_bytes"] = size
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=int, default=6)
    ap.add_argument("--nodes", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-cold-"))
    data = tmp / "data"
    data.mkdir()
    cfg = tmp / "roost.toml"
    cfg.write_text("[retention]\nhot_hours = 1\n")
    settings, _ = load_settings(cfg, overrides={"gateway": {"data_dir": str(data)}}, env={})
    writer = StoreWriter(data / "roost.sqlite3")
    await writer.open()
    task = asyncio.create_task(writer.run())
    first = hour_of(now_ms()) - (a.hours + 3) * HOUR_MS
    msgs = [
        Message(f"node-{n}", 1, i, first + i * 10_000 + n, i * 10_000,
                (("rh_pct", 40 + i % 30 / 10), ("temp_c", 20 + i % 50 / 10)))
        for i in range(a.hours * 360) for n in range(a.nodes)
    ]  # fmt: skip
    for i in range(0, len(msgs), 1000):
        await writer.submit(Unit(msgs[i : i + 1000], now_ms()))
    await writer.drain()
    rollup = Rollup(settings, writer)
    await rollup.run_once(retention_too=False)
    start, end = first, first + a.hours * HOUR_MS
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(data), str(port)], cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(base + "/api/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rss_start = rss_kb(proc.pid)
        hot = await measure(base, start, end)
        rss_hot = rss_kb(proc.pid)
        r = await rollup.run_once()
        pruned = r.pruned_messages
        cold = await measure(base, start, end)
        rss_cold = rss_kb(proc.pid)
        arrow = has_arrow(proc.pid)
        # The reader process stays a while for the next pages: its memory, and that it goes.
        readers = children(proc.pid)
        reader_rss = sum(rss_kb(c) for c in readers)
        again = await measure(base, start, end)
        time.sleep(25)
        readers_after_idle = len(children(proc.pid))
    finally:
        proc.terminate()
        proc.wait()
        task.cancel()
        await writer.close()
    print(json.dumps({
        "messages": len(msgs),
        "readings": len(msgs) * 2,
        "pruned_messages": pruned,
        "hot_baseline": hot,
        "cold": cold,
        "cold_again_reader_running": again,
        "api_rss_kb": {"start": rss_start, "after_hot": rss_hot, "after_cold": rss_cold},
        "pyarrow_mapped_in_api_process": arrow,
        "reader_processes": len(readers),
        "reader_rss_kb": reader_rss,
        "reader_processes_after_25s_idle": readers_after_idle,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())

"""Benchmark: one hour of readings in SQLite -> Parquet through the rollup worker. Prints JSON.

    python bench/rollup.py [--quick] [--nodes N]

One hour of N nodes (default 1,000) x 1 Hz x 3 metrics (10.8M rows) is written into a store with
Roost's schema, then rolled by the real worker process (``python -m gateway.rollup.worker``):
wall seconds, the worker's peak RSS (and its start alone: an hour without rows), bytes per
reading on disk, the size of its report line (the hour's ``hour_stats`` travel in it). Twice:
realistic values (random walks at 0.1 resolution, as DHT22s produce) and random floats.
Baseline in the same run: a bare ``pyarrow.parquet.write_table`` (zstd) of the same rows
already in memory, in its own process.
Also the store's write amplification: bytes written to storage (``/proc/self/io``) per reading
committed through the real ``StoreWriter`` (a smaller sample).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.store import schema  # noqa: E402

HOUR = 1_763_812_800_000
METRICS = ("temp_c", "rh_pct", "pressure_hpa")


def values(nodes: int, seconds: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """(seconds, nodes, 3) values."""
    if kind == "random":
        return rng.random((seconds, nodes, 3)) * 100
    steps = rng.choice([-1, 0, 0, 0, 1], size=(seconds, nodes, 3)).cumsum(axis=0) / 10
    base = np.array([21.0, 45.0, 1013.0]) + rng.normal(0, 2, size=(nodes, 3)).round(1)
    return (base + steps).round(1)


def fill(db: Path, nodes: int, seconds: int, kind: str) -> int:
    rng = np.random.default_rng(7)
    vals = values(nodes, seconds, kind, rng)
    conn = schema.connect(str(db), synchronous="normal")
    schema.migrate(conn)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO nodes (node_ref, node_id, first_seen, last_seen) VALUES (?, ?, ?, ?)",
        [(i + 1, f"{0xE6614103E7450000 + i * 7919:016x}", HOUR, HOUR) for i in range(nodes)],
    )
    conn.executemany("INSERT INTO metrics VALUES (?, ?)", list(enumerate(METRICS, 1)))
    mid = 0
    for s in range(seconds):
        ids = range(mid + 1, mid + nodes + 1)
        ts = [HOUR + s * 1000 + (n * 997) % 1000 for n in range(nodes)]
        conn.executemany(
            "INSERT INTO messages VALUES (?, ?, 3, ?, ?, ?, ?, 0)",
            [
                (i, n + 1, s, t, t + 40, s * 1000)
                for i, n, t in zip(ids, range(nodes), ts, strict=True)
            ],
        )
        v = vals[s].tolist()
        conn.executemany(
            "INSERT INTO readings VALUES (?, ?, ?)",
            [(i, k + 1, v[n][k]) for i, n in zip(ids, range(nodes), strict=True) for k in range(3)],
        )
        mid += nodes
    conn.execute(
        "INSERT INTO counters VALUES ('rows', ?), ('stored', ?)", (mid * 3, mid)
    )
    conn.execute("COMMIT")
    conn.close()
    return mid * 3


def _hwm(pid: int) -> int | None:
    """The process's peak RSS so far (VmHWM, bytes), or None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of a child process.

    The peak is the child's own VmHWM, polled until it exits: ``ru_maxrss`` from wait4 would
    report the benchmark's own RSS, since Linux carries the high-water mark across the fork and
    exec that start the child (it read 287 MB for a worker that peaked below 200 MB).
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            hwm = _hwm(proc.pid)
            if hwm is not None:
                peak = max(peak, hwm)
            time.sleep(0.005)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out = proc.stdout.read().decode()
    proc.wait()
    done.set()
    poller.join()
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed with {proc.returncode}")
    return time.monotonic() - start, peak, out


_BASELINE = r"""
import sys, time, pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])   # the same rows, sorted, already in memory
start = time.monotonic()
pq.write_table(t, sys.argv[2], compression="zstd")
print(time.monotonic() - start)
"""


def bench_kind(work: Path, nodes: int, seconds: int, kind: str) -> dict[str, object]:
    db = work / f"{kind}.sqlite3"
    root = work / f"{kind}-parquet"
    rows = fill(db, nodes, seconds, kind)
    cmd = [sys.executable, "-m", "gateway.rollup.worker", str(db), str(root), str(HOUR),
           "--past-ms", str(10**12), "--future-ms", str(10**12)]
    secs, rss, out = run_measured(cmd)
    line = json.loads(out.splitlines()[-1])
    # The worker's start alone (imports, ADBC, an hour without rows): the floor of its RSS.
    empty = [*cmd[:5], str(HOUR - 3_600_000), *cmd[6:]]
    _, start_rss, _ = run_measured(empty)
    _, _, base_out = run_measured(
        [sys.executable, "-c", _BASELINE, str(root / line["path"]), str(work / "baseline.parquet")]
    )
    base = float(base_out.strip())
    base_bytes = (work / "baseline.parquet").stat().st_size
    db.unlink()
    shutil.rmtree(root)
    return {
        "rows": rows,
        "seconds": round(secs, 2),
        "peak_rss_mb": round(rss / 2**20, 1),
        "worker_start_rss_mb": round(start_rss / 2**20, 1),
        "report_line_bytes": len(out.splitlines()[-1]),
        "bytes_per_reading": round(line["bytes"] / rows, 3),
        "baseline_write_table_seconds": round(base, 2),
        "baseline_bytes_per_reading": round(base_bytes / rows, 3),
        "ratio_to_baseline": round(secs / base, 2),
    }


def store_write_amplification(work: Path, messages: int) -> dict[str, object]:
    """Bytes written to storage per reading through the real StoreWriter (FULL sync)."""
    from gateway.model import Message
    from gateway.store.writer import StoreWriter, Unit, now_ms

    def io() -> int:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        return 0

    async def go() -> tuple[int, int]:
        w = StoreWriter(work / "amp.sqlite3")
        await w.open()
        task = asyncio.create_task(w.run())
        before = io()
        batch = []
        for s in range(messages // 100):
            for n in range(100):
                batch.append(Message(f"node-{n:03d}", 1, s, HOUR + s * 1000 + n, s,
                                     (("rh_pct", 45.0 + n / 10), ("temp_c", 21.0 + s % 9 / 10),
                                      ("pressure_hpa", 1013.2))))
            if len(batch) >= 100:
                await w.submit(Unit(batch, now_ms()))
                batch = []
        await w.drain()
        os.sync()
        written = io() - before
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await w.close()
        return written, messages * 3

    written, readings = asyncio.run(go())
    return {"readings": readings, "bytes_written_per_reading": round(written / readings, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 nodes instead of 1,000")
    ap.add_argument("--nodes", type=int)
    args = ap.parse_args()
    nodes = args.nodes or (100 if args.quick else 1000)
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as d:
        work = Path(d)
        result = {
            "nodes": nodes,
            "hour_rows": nodes * 3600 * 3,
            "realistic": bench_kind(work, nodes, 3600, "realistic"),
            "random": bench_kind(work, nodes, 3600, "random"),
            "store": store_write_amplification(work, 20_000 if args.quick else 100_000),
            "targets": {"seconds": 20, "peak_rss_mb": 250, "bytes_per_reading_realistic": 2},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Ingest's hot path stage by stage, in one process: prints JSON (us of CPU per message).

The same stream as bench/ingest.py (v1 reading messages, two metrics each, 40 nodes) encoded as
the PUBLISH packets a broker would send, then run through the gateway's own code: the MQTT
parser, the decoder, planning (rows built), the SQLite transaction (synchronous=OFF, so the disk
does not count) and PUBACK encoding. No broker and no event loop: what each stage costs in Python,
which bench/ingest.py cannot separate. The garbage collector is set up as ``roost run`` sets it.

Baselines in the same run: ``msgspec.json.decode`` of the payloads into plain dicts (the floor of
decoding) and one ``executemany`` per row for the two inserts (what the writer did before its
multi-row statements).

Usage: python bench/stages.py [--messages 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import msgspec  # noqa: E402
from ingest import stream  # noqa: E402

from gateway.ingest.decode import Decoded, Decoder  # noqa: E402
from gateway.mqtt import wire  # noqa: E402
from gateway.store import plan as planner  # noqa: E402
from gateway.store import schema  # noqa: E402
from gateway.store.writer import _execute, _load_catalog  # noqa: E402

RECEIVED = 1_763_812_345_000


def packets(n: int, nodes: int) -> tuple[list[bytes], list[bytes]]:
    per_node = stream(nodes, n)
    payloads = [per_node[i % nodes][i // nodes] for i in range(n)]
    wire_bytes = b"".join(
        wire.encode_publish(f"roost/v1/node{i % nodes:03d}/readings", p, qos=1, mid=i % 65535 + 1)
        for i, p in enumerate(payloads)
    )
    # Socket-read sized chunks, as the event loop hands them over.
    return [wire_bytes[i : i + 65536] for i in range(0, len(wire_bytes), 65536)], payloads


def fresh_store(folder: str) -> sqlite3.Connection:
    conn = schema.connect(str(Path(folder) / f"s{time.monotonic_ns()}.sqlite3"), synchronous="full")
    conn.execute("PRAGMA synchronous=OFF")
    schema.migrate(conn)
    return conn


def run_once(chunks: list[bytes], payloads: list[bytes], folder: str) -> dict[str, float]:
    n = len(payloads)
    out: dict[str, float] = {}
    t = time.process_time()
    parser = wire.PacketParser()
    pubs: list[wire.Publish] = []
    for c in chunks:
        pubs.extend(x for x in parser.feed(c) if isinstance(x, wire.Publish))
    out["parse"] = time.process_time() - t

    t = time.process_time()
    decode = Decoder().decode
    batches = []
    for s in range(0, n, 500):  # ingest's unit: batch_max_rows // 4 rows
        items: list[Decoded] = []
        mids = []
        for pub in pubs[s : s + 500]:
            items.extend(decode(pub.topic, pub.payload))
            mids.append(pub.mid)
        batches.append((items, mids))
    out["decode"] = time.process_time() - t

    conn = fresh_store(folder)
    cat = _load_catalog(conn)
    out["plan"] = out["sqlite_transaction"] = out["puback"] = 0.0
    for s in range(0, len(batches), 4):  # the writer's transaction: 4 units, 4,000 rows
        group = batches[s : s + 4]
        t = time.process_time()
        p = planner.plan(cat, [(items, RECEIVED, len(mids)) for items, mids in group])
        derived = planner.derive(p.pending)
        t1 = time.process_time()
        _execute(conn, p, derived, 4096)
        t2 = time.process_time()
        for _, mids in group:
            b"".join([wire.encode_puback(m) for m in mids])
        t3 = time.process_time()
        out["plan"] += t1 - t
        out["sqlite_transaction"] += t2 - t1
        out["puback"] += t3 - t2
    stored = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.close()
    if stored != n:
        raise RuntimeError(f"stored {stored} of {n} messages")

    # Baselines.
    t = time.process_time()
    for payload in payloads:
        msgspec.json.decode(payload)
    out["baseline_msgspec_decode_to_dict"] = time.process_time() - t
    conn = fresh_store(folder)
    conn.execute("INSERT INTO nodes (node_ref, node_id, first_seen, last_seen) VALUES (1,'n',0,0)")
    conn.execute("INSERT INTO metrics (metric_ref, name) VALUES (1, 'a'), (2, 'b')")
    msgs = [(i + 1, 1, 1, i, RECEIVED + i, RECEIVED, i, 0) for i in range(n)]
    reads = [(i + 1, m, 20.0 + i % 37 / 10) for i in range(n) for m in (1, 2)]
    t = time.process_time()
    for s in range(0, n, 2000):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR IGNORE INTO messages "
            "(id, node_ref, boot, seq, ts, received, uptime_ms, flags) VALUES (?,?,?,?,?,?,?,?)",
            msgs[s : s + 2000],
        )
        conn.executemany("INSERT INTO readings VALUES (?, ?, ?)", reads[2 * s : 2 * s + 4000])
        conn.execute("COMMIT")
    out["baseline_executemany_per_row_inserts"] = time.process_time() - t
    conn.close()
    return {k: round(v / n * 1e6, 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    chunks, payloads = packets(args.messages, args.nodes)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # as gateway.service._tune_gc sets it
    with tempfile.TemporaryDirectory(prefix="roost-stages-") as folder:
        runs = [run_once(chunks, payloads, folder) for _ in range(args.repeat)]
    median = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
    stages = ("parse", "decode", "plan", "sqlite_transaction", "puback")
    print(
        json.dumps(
            {
                "messages": args.messages,
                "metrics_per_message": 2,
                "repeat": args.repeat,
                "us_cpu_per_message_median": median,
                "us_cpu_per_message_total": round(sum(median[k] for k in stages), 3),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

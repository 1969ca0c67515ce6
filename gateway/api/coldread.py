"""The cold reader: ``python -m gateway.api.coldread DB ROOT``, JSON requests on stdin, one a line.

A separate, short-lived process, like the rollup worker, so that pyarrow (about 83 MB just to
import it) never lives in the gateway: the API starts it when a query touches pruned hours,
keeps it for the next pages a little while, then lets it exit. Requests (``gateway.api.cold``
builds them):

- ``{"op": "readings", "files": [...], "start", "end", "nodes", "metrics", "after", "limit"}``:
  the files' rows in ``[start, end)`` in reading order ``(ts, node_ref, boot, seq, metric_ref)``
  after ``after``, at most ``limit`` + 1 of them (one more says there is a next page). Rows are
  ``[ts, node_ref, boot, seq, metric_ref, received, flags, value]``.
- ``{"op": "series", ..., "bucket_ms"}``: per node, metric and bucket ``ts // bucket_ms``:
  ``[node_ref, metric_ref, k, count, sum, min, max]``.

Each file is ``{"hour", "path", "bytes"}``; a file that is gone or has another size than the
catalog said (dropped or re-rolled meanwhile) is reported as ``{"changed": hour}`` and the caller
reads again. Output: frames of a 4-byte big-endian length and a msgpack document, one per file
read, so the caller has the first rows while later hours are still being read, and
``{"end": true}`` after each answer (``{"error": "..."}`` instead when it failed). Never writes.
"""

from __future__ import annotations

import argparse
import sqlite3
import struct
import sys
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["main"]

HOUR_MS = 3_600_000
_KEY = ("ts", "node", "boot", "seq", "metric")
_COLS = (*_KEY, "received", "flags", "value")


def _frame(out: Any, doc: object) -> None:
    body = msgspec.msgpack.encode(doc)
    out.write(struct.pack(">I", len(body)) + body)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gateway.api.coldread")
    ap.add_argument("db", type=Path)
    ap.add_argument("root", type=Path)
    args = ap.parse_args(argv)
    out = sys.stdout.buffer
    # One request per line; the caller keeps the process for the next page a while, then
    # closes stdin (or kills it) so that pyarrow's memory goes back to the system.
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            answer(args.db, args.root, msgspec.json.decode(line), out)
        except Exception as exc:
            # One bad file or request fails that query, not the next one.
            _frame(out, {"error": f"{type(exc).__name__}: {exc}"[:500]})
        else:
            _frame(out, {"end": True})
    return 0


def answer(db: Path, root: Path, req: dict[str, Any], out: Any) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # Read per request: nodes and metrics registered since the last one must map too.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        node_ref = {n: r for r, n in conn.execute("SELECT node_ref, node_id FROM nodes")}
        metric_ref = {n: r for r, n in conn.execute("SELECT metric_ref, name FROM metrics")}
    finally:
        conn.close()
    node_names = pa.array(list(node_ref), pa.string())
    node_refs = pa.array(list(node_ref.values()), pa.int64())
    metric_names = pa.array(list(metric_ref), pa.string())
    metric_refs = pa.array(list(metric_ref.values()), pa.int64())
    start, end = int(req["start"]), int(req["end"])
    nodes, metrics = list(req["nodes"]), list(req["metrics"])
    after = tuple(req["after"]) if req.get("after") else None
    limit = int(req.get("limit") or 0)
    sent = 0
    utc = pa.timestamp("ms", tz="UTC")
    for f in req["files"]:
        hour = int(f["hour"])
        path = root / f["path"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size != int(f["bytes"]):
            _frame(out, {"changed": hour})
            continue
        lo, hi = max(start, hour), min(end, hour + HOUR_MS)
        if after is not None:
            lo = max(lo, int(after[0]))
        flt = (pc.field("ts") >= pa.scalar(lo, utc)) & (pc.field("ts") < pa.scalar(hi, utc))
        if nodes:
            flt &= pc.field("node_id").isin(nodes)
        if metrics:
            flt &= pc.field("metric").isin(metrics)
        t = pq.read_table(path, filters=flt)
        ts = pc.cast(t.column("ts"), pa.int64())
        if req["op"] == "series":
            b = int(req["bucket_ms"])
            g = (
                pa.table(
                    {
                        "node_id": t.column("node_id"),
                        "metric": t.column("metric"),
                        "k": pc.divide(ts, pa.scalar(b, pa.int64())),
                        "value": t.column("value"),
                    }
                )
                .group_by(["node_id", "metric", "k"])
                .aggregate(
                    [("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max")]
                )
            )
            rows = [
                [node_ref[n], metric_ref[m], k, c, s, mn, mx]
                for n, m, k, c, s, mn, mx in zip(
                    *(g.column(c).to_pylist() for c in
                      ("node_id", "metric", "k", "value_count", "value_sum", "value_min",
                       "value_max")),
                    strict=True,
                )
            ]  # fmt: skip
            _frame(out, {"hour": hour, "rows": rows})
            continue
        # Order and cut in Arrow, so only the page's rows become Python objects (an hour of a
        # big fleet is millions of rows).
        k = pa.table(
            {
                "ts": ts,
                "node": pc.take(node_refs, pc.index_in(t.column("node_id"), value_set=node_names)),
                "boot": pc.cast(t.column("boot"), pa.int64()),
                "seq": t.column("seq"),
                "metric": pc.take(
                    metric_refs, pc.index_in(t.column("metric"), value_set=metric_names)
                ),
                "received": pc.cast(t.column("received"), pa.int64()),
                "flags": t.column("flags"),
                "value": t.column("value"),
            }
        )
        k = k.take(pc.sort_indices(k, sort_keys=[(c, "ascending") for c in _KEY]))
        if after is not None:
            # Sorted, and ts >= after[0] by the filter: the rows at or before the cursor are a
            # prefix among those with ts == after[0].
            same = int(pc.sum(pc.equal(k.column("ts"), after[0])).as_py() or 0)
            head = zip(*(k.column(c).slice(0, same).to_pylist() for c in _KEY), strict=True)
            k = k.slice(sum(1 for key in head if key <= after))
        k = k.slice(0, limit + 1 - sent)
        keyed = [list(r) for r in zip(*(k.column(c).to_pylist() for c in _COLS), strict=True)]
        sent += len(keyed)
        _frame(out, {"hour": hour, "rows": keyed})
        if sent > limit:
            break  # hours are read in order and their times do not overlap: the page is full


if __name__ == "__main__":
    sys.exit(main())

"""The rollup worker: ``python -m gateway.rollup.worker DB ROOT HOUR[:AFTER_ID] ...``.

A short-lived process, so that pyarrow's memory (about 83 MB just to import it) is returned to
the system when the hours are written; the gateway and ``roost rollup`` start it and read one
JSON line per hour from its stdout. It never writes SQLite: the caller records each hour in the
catalog through the store writer.

One worker at a time per dataset (an exclusive lock on ``ROOT/.rollup.lock``). It first deletes
what a killed worker left behind (hidden ``.*.tmp`` files, ``.spill-*`` directories): nothing a
reader looks at, since the dataset's readers skip hidden files and match ``*.parquet``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import shutil
import sys
import time
from pathlib import Path

__all__ = ["clean_leftovers", "main"]

log = logging.getLogger("roost.rollup.worker")


def clean_leftovers(root: Path) -> int:
    """Delete temporary files and spill directories of interrupted runs; returns how many."""
    n = 0
    for p in root.glob(".spill-*"):
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    for p in (root / "readings").glob("**/.*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gateway.rollup.worker")
    ap.add_argument("db", type=Path)
    ap.add_argument("root", type=Path)
    ap.add_argument("hours", nargs="*", help="HOUR or HOUR:AFTER_ID (epoch ms)")
    ap.add_argument("--row-group-rows", type=int, default=500_000)
    ap.add_argument("--past-ms", type=int, required=True)
    ap.add_argument("--future-ms", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")

    from gateway.rollup.catalog import Window
    from gateway.rollup.parquet import roll_hour

    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True)
    window = Window(args.past_ms, args.future_ms)
    with (root / ".rollup.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cleaned = clean_leftovers(root)
        if cleaned:
            log.warning("removed %d leftovers of an interrupted rollup", cleaned)
        for spec in args.hours:
            hour_text, _, after = spec.partition(":")
            started = time.monotonic()
            r = roll_hour(
                args.db,
                root,
                int(hour_text),
                window=window,
                row_group_rows=args.row_group_rows,
                merge_after=int(after) if after else None,
            )
            line = {
                "hour": r.hour,
                "path": r.path,
                "rows": r.rows,
                "bytes": r.bytes,
                "sha256": r.sha256,
                "max_id": r.max_id,
                "seconds": round(time.monotonic() - started, 3),
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

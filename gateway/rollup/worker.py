"""The rollup worker: ``python -m gateway.rollup.worker DB ROOT HOUR[:AFTER_ID] ...``.

A short-lived process, so that pyarrow's memory (about 83 MB just to import it) is returned to
the system when the hours are written; the gateway and ``roost rollup`` start it and read one
JSON line per hour from its stdout (with the hour's ``hour_stats`` as columns: about 120 kB for
1,000 nodes x 3 metrics). It never writes SQLite: the caller records each hour in the
catalog through the store writer.

Memory (docs/performance.md, "Parquet rollup"): the worker blocks the pandas import (pyarrow
imports it, when installed, on its first conversion of values, about 40 MB the worker never
uses), makes glibc give large blocks back at once (``mallopt``: the ADBC driver's batches and
NumPy's temporaries are malloc'd outside Arrow's pool) and uses Arrow's jemalloc pool with
immediate decay; Arrow's default mimalloc pool kept ~100 MB more resident than it used.

One worker at a time per dataset (an exclusive lock on ``ROOT/.rollup.lock``). It first deletes
what a killed worker left behind (hidden ``.*.tmp`` files, ``.spill-*`` directories): nothing a
reader looks at, since the dataset's readers skip hidden files and match ``*.parquet``.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = ["clean_leftovers", "main"]

log = logging.getLogger("roost.rollup.worker")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: Blocks from this size up are mmap'd, so freeing one returns it to the system at once.
_MMAP_BYTES = 128 * 1024


class _NoPandas:
    """A meta path finder that makes ``import pandas`` fail: pyarrow then goes without it."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not used by the rollup worker")
        return None


def _lean_memory() -> None:
    """Before pyarrow is imported: no pandas, glibc returning freed blocks, Arrow's jemalloc.

    ``ARROW_DEFAULT_MEMORY_POOL`` set by the caller still picks Arrow's pool (for measuring).
    """
    sys.meta_path.insert(0, _NoPandas())
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: its allocator keeps its own defaults
        pass
    else:
        # Static thresholds also stop glibc from raising them as big blocks are freed,
        # which is what lets the heap keep them otherwise.
        for option, value in (
            (_M_ARENA_MAX, 2),
            (_M_MMAP_THRESHOLD, _MMAP_BYTES),
            (_M_TRIM_THRESHOLD, _MMAP_BYTES),
        ):
            mallopt(option, value)
    # Arrow's jemalloc, returning freed pages at once. Through the environment, before pyarrow
    # loads: Arrow's C++ code (IPC, compute kernels) allocates from the pool the variable
    # names, whatever pa.set_memory_pool says later. glibc's heap fragments under the spill
    # phase's many buffers (+40 MB), and mimalloc keeps freed pages.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != os.environ["ARROW_DEFAULT_MEMORY_POOL"]:
        log.info(
            "Arrow memory pool %r unavailable, using %r",
            os.environ["ARROW_DEFAULT_MEMORY_POOL"],
            pa.default_memory_pool().backend_name,
        )


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
    _lean_memory()

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
                "stats": r.stats.to_json(),
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

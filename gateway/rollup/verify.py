"""``roost parquet verify``: every catalogued file exists, matches its checksum and row count,
and reads back. Imports pyarrow: CLI only."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gateway.rollup import catalog
from gateway.rollup.catalog import file_sha256
from gateway.rollup.hours import DATASET, label

__all__ = ["Report", "verify"]


@dataclass(slots=True)
class Report:
    checked: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    #: Files in the dataset the catalog does not list (not an error: a crash between the
    #: rename and the catalog commit leaves one; the next rollup records it).
    unlisted: list[str] = field(default_factory=list)


def verify(
    conn: sqlite3.Connection, root: Path, progress: Callable[[int, int], None] | None = None
) -> Report:
    report = Report()
    listed = catalog.entries(conn)
    for i, e in enumerate(listed):
        path = root / e.path
        where = f"{label(e.hour)} ({e.path})"
        report.checked += 1
        if progress is not None:
            progress(i + 1, len(listed))
        if not path.is_file():
            report.problems.append(f"{where}: file is missing")
            continue
        size = path.stat().st_size
        if size != e.bytes:
            report.problems.append(f"{where}: {size} bytes, the catalog says {e.bytes}")
        if file_sha256(path) != e.sha256:
            report.problems.append(f"{where}: checksum differs from the catalog's")
        try:
            pf = pq.ParquetFile(path)
            rows = 0
            for g in range(pf.num_row_groups):
                rows += pf.read_row_group(g).num_rows
        except (OSError, pa.ArrowException) as exc:
            report.problems.append(f"{where}: not readable ({exc})")
            continue
        if rows != e.rows:
            report.problems.append(f"{where}: {rows} rows, the catalog says {e.rows}")
        report.rows += rows
    known = {e.path for e in listed}
    for p in sorted((root / DATASET).glob("**/*.parquet")):
        rel = p.relative_to(root).as_posix()
        if rel not in known:
            report.unlisted.append(rel)
    return report

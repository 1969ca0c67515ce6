"""UTC hours: the rollup's unit, their partition paths and their names on the command line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "DATASET",
    "FILE_NAME",
    "HOUR_MS",
    "hour_of",
    "label",
    "parquet_root",
    "parse_hour",
    "relpath",
]

HOUR_MS = 3_600_000
#: The dataset's directory below ``<data_dir>/parquet``.
DATASET = "readings"
#: One file per hour: a re-roll replaces it by renaming over it, which is atomic.
FILE_NAME = "readings.parquet"


def hour_of(ts_ms: int) -> int:
    """The start (epoch ms) of the UTC hour that holds ``ts_ms``."""
    return ts_ms - ts_ms % HOUR_MS


def _dt(hour: int) -> datetime:
    return datetime.fromtimestamp(hour / 1000, UTC)


def relpath(hour: int) -> str:
    """The hour's file relative to ``<data_dir>/parquet`` (hive layout, UTC)."""
    d = _dt(hour)
    return f"{DATASET}/date={d:%Y-%m-%d}/hour={d:%H}/{FILE_NAME}"


def label(hour: int) -> str:
    """``YYYY-MM-DDTHH``: how people name an hour (``roost rollup --hour``)."""
    return f"{_dt(hour):%Y-%m-%dT%H}"


def parse_hour(text: str) -> int:
    """Parse ``YYYY-MM-DDTHH`` (UTC) into the hour's start in epoch ms."""
    try:
        d = datetime.strptime(text, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not an hour: write YYYY-MM-DDTHH (UTC)") from None
    return int(d.timestamp() * 1000)


def parquet_root(data_dir: Path) -> Path:
    """Where the Parquet dataset and the rollup's own files live in a data dir."""
    return data_dir / "parquet"

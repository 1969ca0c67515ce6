"""The rollup scheduler: the gateway task that rolls closed hours, prunes, watches the budget.

Every ``rollup.interval_s`` one pass: scan new messages into the to-do list, check that each
catalogued file is still there with its size, start the worker process for the due hours (each
closed for ``rollup.grace_s``; missed hours after downtime are simply due), record each hour it
reports through the store writer, then retention. A failed worker (killed, disk full) leaves
the catalog as it was and its hours due: the next pass rolls them again. ``roost rollup`` runs
the same pass once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Settings
from gateway.rollup import catalog, retention
from gateway.rollup.budget import Budget
from gateway.rollup.catalog import HourStats, Rolled, Window
from gateway.rollup.hours import HOUR_MS, label, parquet_root
from gateway.store.reader import db_path
from gateway.store.writer import StoreWriter, now_ms

__all__ = ["PassResult", "Rollup", "RollupFailed", "io_write_bytes"]

log = logging.getLogger("roost.rollup")

#: The longest line the worker may report (an hour with ~1.5M (node, metric) pairs).
_LINE_LIMIT = 64 * 2**20


class RollupFailed(Exception):
    """The worker process failed; its hours stay due."""


@dataclass(slots=True)
class PassResult:
    """What one pass did."""

    rolled: list[Rolled] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    quarantined: int = 0
    pruned_messages: int = 0
    dropped_hours: int = 0
    due: int = 0


def io_write_bytes() -> int | None:
    """Bytes this process caused to be written to storage (``/proc/self/io``), if known."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Rollup:
    """Rollup, retention and the disk budget for one data dir (see the module docstring)."""

    def __init__(self, settings: Settings, writer: StoreWriter) -> None:
        self.settings = settings
        self.writer = writer
        self.data_dir = settings.data_dir
        self.root = parquet_root(self.data_dir)
        r = settings.rollup
        self.window = Window(int(r.accept_past_days * 86_400_000), r.accept_future_s * 1000)
        self.sinks = [s.name for s in settings.sinks if s.enabled]
        self.budget = Budget(settings.budget, self.data_dir, writer, self.delivered)
        writer.set_gate(self.budget.gate)
        self.failures = 0
        self._io_start = io_write_bytes()
        self._rows_start: int | None = None

    def delivered(self, conn: sqlite3.Connection) -> int | None:
        """The retention hook: the lowest delivered message id of the enabled sinks."""
        return retention.delivered_upto(conn, self.sinks)

    async def run(self) -> None:
        """The gateway task: the budget loop and, when enabled, the rollup loop."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.budget.run(), name="disk-budget")
            if self.settings.rollup.enabled:
                tg.create_task(self._loop(), name="rollup-loop")

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except RollupFailed as exc:
                log.error("rollup failed: %s; the hours stay due and are retried", exc)
            except Exception:  # never let a rollup problem stop ingest
                log.exception("rollup pass failed; retrying next pass")
            await self._record_io()
            await asyncio.sleep(self.settings.rollup.interval_s)

    async def _record_io(self) -> None:
        """Bytes written to storage per stored reading since start (SD card wear)."""
        now = io_write_bytes()
        if now is None or self._io_start is None:
            return

        def job(conn: sqlite3.Connection) -> None:
            rows = int(
                conn.execute(
                    "SELECT coalesce((SELECT value FROM counters WHERE name = 'rows'), 0)"
                ).fetchone()[0]
            )
            if self._rows_start is None:
                self._rows_start = rows
            catalog.set_state(conn, "io_write_bytes", now - (self._io_start or 0))
            catalog.set_state(conn, "io_rows", rows - self._rows_start)

        with contextlib.suppress(sqlite3.Error):
            await self.writer.execute(job)

    async def run_once(
        self,
        *,
        hour: int | None = None,
        now: int | None = None,
        progress: Callable[[int, int, Rolled | None], None] | None = None,
        retention_too: bool = True,
    ) -> PassResult:
        """One pass (see the module docstring); ``hour`` rolls that hour only, due or not."""
        out = PassResult()
        t = now_ms() if now is None else now
        while True:
            scanned = await self.writer.execute(lambda conn: catalog.scan(conn, self.window, t))
            out.quarantined += scanned.quarantined
            if not scanned.more:
                break
        if out.quarantined:
            log.warning(
                "%d reading messages have a sample time outside the accepted window: "
                "quarantined, not rolled",
                out.quarantined,
            )

        def check(conn: sqlite3.Connection) -> list[tuple[int, int | None]]:
            broken, problems = catalog.check_files(conn, self.root)
            out.problems.extend(problems)
            catalog.mark_for_reroll(conn, broken)
            # Hours rolled before hour_stats existed (schema 4): roll them again once.
            backfill = catalog.missing_stats(conn)
            if backfill:
                log.info("rolling %d hours again to record their hour_stats", len(backfill))
            catalog.mark_for_reroll(conn, backfill)
            if hour is not None:
                catalog.mark_for_reroll(conn, [hour])
            grace = self.settings.rollup.grace_s * 1000
            return catalog.due_hours(conn, t, grace, only=hour)

        due = await self.writer.execute(check)
        for p in out.problems:
            log.error("parquet: %s", p)
        out.due = len(due)
        if due:
            await self._roll(due, out, progress)
        if retention_too:
            await self.retention(t, out)
        return out

    async def _roll(
        self,
        due: list[tuple[int, int | None]],
        out: PassResult,
        progress: Callable[[int, int, Rolled | None], None] | None,
    ) -> None:
        r = self.settings.rollup
        specs = [str(h) if after is None else f"{h}:{after}" for h, after in due]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.rollup.worker",
            str(db_path(self.data_dir)),
            str(self.root),
            *specs,
            "--row-group-rows",
            str(r.row_group_rows),
            "--past-ms",
            str(self.window.past_ms),
            "--future-ms",
            str(self.window.future_ms),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            # A line carries the hour's stats: ~40 bytes per (node, metric), far beyond
            # asyncio's default 64 KiB line limit for a big fleet.
            limit=_LINE_LIMIT,
        )
        assert proc.stdout is not None
        if progress is not None:
            progress(0, len(due), None)
        try:
            async for line in proc.stdout:
                d = json.loads(line)
                rolled = Rolled(
                    d["hour"],
                    d["path"],
                    d["rows"],
                    d["bytes"],
                    d["sha256"],
                    d["max_id"],
                    HourStats.from_json(d["stats"]),
                )

                def record(conn: sqlite3.Connection, rolled: Rolled = rolled) -> None:
                    catalog.record(conn, rolled, now_ms())

                await self.writer.execute(record)
                out.rolled.append(rolled)
                log.info(
                    "rolled %s: %s rows, %s bytes in %.1fs",
                    label(rolled.hour),
                    f"{rolled.rows:,}",
                    f"{rolled.bytes:,}",
                    d["seconds"],
                )
                if progress is not None:
                    progress(len(out.rolled), len(due), rolled)
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            self.failures += 1
            with contextlib.suppress(sqlite3.Error):
                await self.writer.execute(
                    lambda conn: catalog.add_counters(conn, rollup_failures=1)
                )
            raise RollupFailed(
                f"worker exited with code {code} after {len(out.rolled)} of {len(due)} hours"
            )

    async def retention(self, now: int, out: PassResult) -> None:
        """Hot rows out of SQLite; Parquet out by age or size (``[retention]``)."""
        s = self.settings.retention
        cutoff = now - int(s.hot_hours * HOUR_MS)
        delivered = await self.writer.execute(self.delivered)
        candidates = await self.writer.execute(
            lambda conn: retention.prune_candidates(conn, cutoff)
        )
        for h, max_id in candidates:
            while True:

                def prune(conn: sqlite3.Connection, h: int = h, m: int = max_id) -> tuple[int, int]:
                    return retention.prune_hour(conn, h, m, delivered)

                n, _ = await self.writer.execute(prune)
                out.pruned_messages += n
                if n < retention.PRUNE_CHUNK:
                    break
        while True:
            n, _ = await self.writer.execute(
                lambda conn: retention.prune_excluded(conn, cutoff, delivered)
            )
            out.pruned_messages += n
            if n < retention.PRUNE_CHUNK:
                break
        if s.parquet_days or s.parquet_max_bytes:
            older = now - int(s.parquet_days * 86_400_000) if s.parquet_days else None

            def job(conn: sqlite3.Connection) -> list[retention.DropCandidate]:
                hours = retention.parquet_to_drop(
                    conn, older_than_ms=older, max_bytes=s.parquet_max_bytes or None
                )
                retention.drop_hours(conn, hours, now, "retention_dropped_hours")
                return hours

            dropped = await self.writer.execute(job)
            for c in dropped:
                (self.root / c.path).unlink(missing_ok=True)
            out.dropped_hours += len(dropped)
            if dropped:
                log.info("retention: dropped %d Parquet hours", len(dropped))
        if out.pruned_messages:
            log.info("retention: %s messages left SQLite", f"{out.pruned_messages:,}")

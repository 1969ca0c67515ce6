"""The disk budget: the SD card never fills up silently.

Two limits (``[budget]``): the data dir's bytes (the store's used pages and WAL plus the live
Parquet files) against ``max_bytes``, and the file system's free space against
``min_free_bytes``. When one is crossed the policy runs in order:

1. drop the oldest Parquet hours that ``drop_parquet`` allows (``delivered``: hours every enabled
   upstream sink has delivered; with no sink enabled the files are the only copy and nothing is
   dropped; ``oldest``: any; ``never``);
2. if still over, hold ingest: the store writer stops committing (the gate below), so nothing is
   acknowledged, ingest stops reading at ``ingest.max_pending`` and the broker and the nodes keep
   the readings. Logged as an error, counted (``budget_pauses``) and shown by ``roost stats``.

Ingest resumes by itself at the first check that finds the limits met again. The store's used
bytes (pages minus the free list) fall as retention deletes rows, since SQLite reuses freed
pages, so retention alone can end a pause. The database is never touched beyond what SQLite
itself does: a transaction that cannot be written is rolled back and retried by the writer.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import BudgetSettings
from gateway.rollup import catalog, retention
from gateway.rollup.hours import label, parquet_root
from gateway.store.reader import db_path
from gateway.store.writer import StoreWriter, now_ms

__all__ = ["Budget", "BudgetState", "Usage", "measure"]

log = logging.getLogger("roost.budget")


@dataclass(frozen=True, slots=True)
class Usage:
    """The data dir's bytes as the budget counts them, and the file system's free bytes."""

    sqlite_bytes: int
    parquet_bytes: int
    free_bytes: int

    @property
    def data_bytes(self) -> int:
        return self.sqlite_bytes + self.parquet_bytes

    def over(self, s: BudgetSettings) -> str | None:
        """Why the budget is exceeded, or None."""
        if s.max_bytes and self.data_bytes > s.max_bytes:
            return f"data dir holds {self.data_bytes:,} bytes, budget.max_bytes is {s.max_bytes:,}"
        if self.free_bytes < s.min_free_bytes:
            return (
                f"{self.free_bytes:,} bytes free on the data dir's file system, "
                f"budget.min_free_bytes is {s.min_free_bytes:,}"
            )
        return None


def measure(conn: sqlite3.Connection, data_dir: Path) -> Usage:
    """Measure with a read connection: used pages (not the file size) plus the WAL."""
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    wal = db_path(data_dir).with_name(db_path(data_dir).name + "-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    try:
        parquet = int(
            conn.execute(
                "SELECT coalesce(sum(bytes), 0) FROM parquet_hours WHERE dropped_at IS NULL"
            ).fetchone()[0]
        )
    except sqlite3.OperationalError:
        parquet = 0  # a store from before the rollup
    return Usage((pages - free) * page_size + wal_bytes, parquet, shutil.disk_usage(data_dir).free)


@dataclass(slots=True)
class BudgetState:
    """What ``roost stats``, the API and the dashboard show of the budget."""

    paused: bool = False
    reason: str | None = None
    paused_since_ms: int | None = None
    pauses: int = 0
    dropped_hours: int = 0
    usage: Usage | None = None


class Budget:
    """Checks the limits every ``check_interval_s``; ``gate`` is the writer's commit gate."""

    def __init__(
        self,
        settings: BudgetSettings,
        data_dir: Path,
        writer: StoreWriter,
        delivered: Callable[[sqlite3.Connection], int | None],
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.writer = writer
        self.delivered = delivered
        self.state = BudgetState()
        self._open = asyncio.Event()
        self._open.set()

    async def gate(self) -> None:
        """Return at once within budget; otherwise wait until the budget is met again."""
        if not self._open.is_set():
            await self._open.wait()

    async def run(self) -> None:
        """The check loop (a task of the rollup scheduler)."""
        while True:
            try:
                await self.check()
            except Exception:  # a failed check must not stop ingest; the next one retries
                log.exception("disk budget check failed")
            await asyncio.sleep(self.settings.check_interval_s)

    async def _measure(self) -> Usage:
        def job() -> Usage:
            conn = sqlite3.connect(f"file:{db_path(self.data_dir)}?mode=ro", uri=True)
            try:
                return measure(conn, self.data_dir)
            finally:
                conn.close()

        return await asyncio.to_thread(job)

    async def check(self) -> None:
        """Measure; drop Parquet as the policy allows; pause or resume ingest."""
        s = self.settings
        usage = await self._measure()
        reason = usage.over(s)
        if reason is not None and s.drop_parquet != "never" and await self._drop(usage):
            usage = await self._measure()
            reason = usage.over(s)
        self.state.usage = usage
        st = self.state
        if reason is not None and not st.paused:
            st.paused, st.reason, st.paused_since_ms = True, reason, now_ms()
            st.pauses += 1
            self._open.clear()
            log.error(
                "DISK BUDGET REACHED: %s. Ingest is paused: readings stay unacknowledged with "
                "the broker and the nodes until space returns (free space or raise the budget, "
                "docs/parquet.md)",
                reason,
            )
            await self._record(budget_pauses=1, paused_since=st.paused_since_ms)
        elif reason is not None:
            st.reason = reason
        elif st.paused:
            since = st.paused_since_ms or now_ms()
            st.paused, st.reason, st.paused_since_ms = False, None, None
            self._open.set()
            log.warning(
                "disk budget met again after %.0f s: ingest resumes", (now_ms() - since) / 1000
            )
            await self._record(budget_paused_ms=now_ms() - since, paused_since=0)

    async def _record(self, paused_since: int, **counters: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            catalog.add_counters(conn, **counters)
            catalog.set_state(conn, "budget_paused_since", paused_since)

        try:
            await self.writer.execute(job)
        except sqlite3.Error as exc:  # a full disk may refuse even this small write
            log.error("could not record the budget state in the store: %s", exc)

    async def _drop(self, usage: Usage) -> bool:
        s = self.settings
        need = 0
        if s.max_bytes and usage.data_bytes > s.max_bytes:
            need = usage.data_bytes - s.max_bytes
        if usage.free_bytes < s.min_free_bytes:
            need = max(need, s.min_free_bytes - usage.free_bytes)

        def job(conn: sqlite3.Connection) -> list[retention.DropCandidate]:
            if s.drop_parquet == "oldest":
                upto: int | bool | None = None
            else:
                upto = self.delivered(conn)
                if upto is None:
                    upto = False  # no sink: the Parquet files are the only copy
            hours = retention.parquet_to_drop(conn, delivered=upto, need_bytes=need)
            retention.drop_hours(conn, hours, now_ms(), "budget_dropped_hours")
            return hours

        try:
            hours = await self.writer.execute(job)
        except sqlite3.Error as exc:
            log.error("disk budget: could not record dropped Parquet hours: %s", exc)
            return False
        root = parquet_root(self.data_dir)
        for c in hours:
            (root / c.path).unlink(missing_ok=True)
        if hours:
            self.state.dropped_hours += len(hours)
            log.warning(
                "disk budget: dropped %d Parquet hours (%s .. %s, %s bytes) to make room",
                len(hours),
                label(hours[0].hour),
                label(hours[-1].hour),
                f"{sum(c.bytes for c in hours):,}",
            )
        return bool(hours)

"""The disk budget on a small file system (a tmpfs the test mounts): pause, drop, resume."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.rollup.hours import relpath
from gateway.store.writer import Unit, now_ms
from tests.conftest import wait_for
from tests.rollup.conftest import HOUR, Store, fleet

MiB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_disk_pauses_ingest_then_resumes(make_store, small_fs: Path,  # type: ignore[no-untyped-def]
                                                    caplog: pytest.LogCaptureFixture) -> None:
    s: Store = await make_store(f"[budget]\nmin_free_bytes = {3 * MiB}\ncheck_interval_s = 0.1\n",
                                data_dir=small_fs / "data")
    await s.add(fleet(HOUR, 2, 5))
    budget_task = asyncio.create_task(s.rollup.budget.run())
    try:
        ballast = small_fs / "ballast"
        ballast.write_bytes(b"\0" * (6 * MiB))  # leaves < 3 MiB free
        await wait_for(lambda: s.rollup.budget.state.paused, what="paused")
        assert "DISK BUDGET REACHED" in caplog.text
        # New readings are not committed (so not acknowledged) while paused.
        acked: list[int] = []
        await s.writer.submit(Unit(fleet(HOUR, 2, 5, first_seq=100), now_ms(), 1,
                                   lambda: acked.append(1)))
        await asyncio.sleep(0.5)
        assert acked == [] and s.one("SELECT count(*) FROM messages") == 10
        ballast.unlink()
        await wait_for(lambda: acked == [1], what="committed after space returned")
        assert s.one("SELECT count(*) FROM messages") == 20
        assert not s.rollup.budget.state.paused
        assert s.one("SELECT value FROM counters WHERE name = 'budget_pauses'") == 1
        assert s.one("PRAGMA integrity_check") == "ok"
    finally:
        budget_task.cancel()


async def test_drops_delivered_parquet_before_pausing(make_store, small_fs: Path) -> None:  # type: ignore[no-untyped-def]
    s: Store = await make_store(
        f"[budget]\nmin_free_bytes = {2 * MiB}\n"
        '[[sinks]]\nname = "cloud"\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1"\n',
        data_dir=small_fs / "data")
    await s.add(fleet(HOUR, 3, 10) + fleet(HOUR + 3_600_000, 3, 10, first_seq=10))
    await s.rollup.run_once()
    first, second = (s.data_dir / "parquet" / relpath(h) for h in (HOUR, HOUR + 3_600_000))
    assert first.exists() and second.exists()
    # The first hour is delivered, the second is not.
    max_first = s.one("SELECT max(id) FROM messages WHERE ts < ?", HOUR + 3_600_000)
    await s.writer.execute(lambda c: c.execute(
        "INSERT INTO sink_cursors (name, type, cursor) VALUES ('cloud', 'mqtt', ?)", (max_first,)))
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    (small_fs / "ballast").write_bytes(b"\0" * (free - 2 * MiB + 1024))
    await s.rollup.budget.check()
    assert not first.exists() and second.exists()
    assert s.rollup.budget.state.paused  # dropping one small hour was not enough
    assert s.one("SELECT value FROM counters WHERE name = 'budget_dropped_hours'") == 1
    (small_fs / "ballast").unlink()
    await s.rollup.budget.check()
    assert not s.rollup.budget.state.paused


@contextlib.contextmanager
def parquet_on(small_fs: Path, s: Store) -> Iterator[Path]:
    """The store's Parquet root bind-mounted onto the small file system (unmounted after)."""
    root = s.data_dir / "parquet"
    root.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(small_fs), str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def fill(root: Path) -> None:
    """Fill the file system under ``root`` to the last byte (``root / "ballast"``)."""
    with contextlib.suppress(OSError), (root / "ballast").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


async def test_full_disk_during_rollup_leaves_old_state_and_next_run_succeeds(
    make_store, small_fs: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    s: Store = await make_store(data_dir=tmp_path / "data")
    await s.add(fleet(HOUR, 200, 300))
    with parquet_on(small_fs, s) as root:
        fill(root)
        from gateway.rollup.scheduler import RollupFailed

        with pytest.raises(RollupFailed):
            await s.rollup.run_once()
        assert not (root / relpath(HOUR)).exists()
        assert s.one("SELECT count(*) FROM parquet_hours") == 0
        assert s.one("SELECT count(*) FROM rollup_todo") == 1
        (root / "ballast").unlink()
        r = await s.rollup.run_once()
        assert r.rolled[0].rows == 200 * 300 * 3
        assert not list(root.glob(".spill-*")) and not list(root.glob("readings/**/.*.tmp"))
    conn = sqlite3.connect(s.data_dir / "roost.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_full_disk_during_a_reroll_keeps_the_old_file_and_stats(
    make_store, small_fs: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    import hashlib

    from gateway.rollup.scheduler import RollupFailed

    s: Store = await make_store(data_dir=tmp_path / "data")
    await s.add(fleet(HOUR, 100, 300))
    with parquet_on(small_fs, s) as root:
        await s.rollup.run_once()
        part = root / relpath(HOUR)
        old = hashlib.sha256(part.read_bytes()).hexdigest()
        await s.add(fleet(HOUR, 100, 100, first_seq=300))  # late readings: due again
        fill(root)
        with pytest.raises(RollupFailed):
            await s.rollup.run_once()
        assert hashlib.sha256(part.read_bytes()).hexdigest() == old
        assert s.one("SELECT sha256 FROM parquet_hours") == old
        assert s.one("SELECT sum(n) FROM hour_stats") == 100 * 300 * 3
        (root / "ballast").unlink()
        r = await s.rollup.run_once()
        assert [x.rows for x in r.rolled] == [100 * 400 * 3]
        assert s.one("SELECT sum(n) FROM hour_stats") == 100 * 400 * 3
        assert not list(root.glob(".spill-*")) and not list(root.glob("readings/**/.*.tmp"))

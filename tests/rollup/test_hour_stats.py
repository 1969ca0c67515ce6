"""hour_stats: per (node, metric) n/sum/min/max of each rolled hour, in the catalog's
transaction."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from gateway.rollup.hours import HOUR_MS, label, relpath
from tests.rollup.conftest import HOUR, Store, fleet

Row = tuple[str, str, int, int, float, float, float]


def stats(s: Store) -> list[Row]:
    conn = s.db()
    try:
        return conn.execute(
            "SELECT n.node_id, k.name, h.hour, h.n, h.sum, h.min, h.max FROM hour_stats h "
            "JOIN nodes n USING (node_ref) JOIN metrics k USING (metric_ref) "
            "ORDER BY h.hour, n.node_id, k.name"
        ).fetchall()
    finally:
        conn.close()


def from_files(root: Path) -> list[Row]:
    """The same aggregates computed by another reader (DuckDB) from the Parquet files."""
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT node_id, metric, epoch_ms(date_trunc('hour', ts)), count(*), sum(value), "
            "min(value), max(value) FROM read_parquet(?) GROUP BY ALL ORDER BY 3, 1, 2",
            [str(root / "readings" / "**" / "*.parquet")],
        ).fetchall()
    finally:
        con.close()
    return [(a, b, int(c), int(d), e, f, g) for a, b, c, d, e, f, g in rows]


def same(a: list[Row], b: list[Row]) -> bool:
    """Equal, sums to rounding (the two readers add in different orders)."""
    return len(a) == len(b) and all(
        x[:4] == y[:4] and abs(x[4] - y[4]) <= 1e-9 * max(1.0, abs(y[4])) and x[5:] == y[5:]
        for x, y in zip(a, b, strict=True)
    )


async def test_recorded_with_each_hour_and_replaced_on_reroll(store: Store) -> None:
    msgs = fleet(HOUR, 4, 30) + fleet(HOUR + HOUR_MS, 2, 10, first_seq=30)
    late = [m for m in msgs if m.seq % 5 == 1]
    await store.add([m for m in msgs if m.seq % 5 != 1])
    await store.rollup.run_once()
    root = store.data_dir / "parquet"
    first = stats(store)
    assert len(first) == 4 * 3 + 2 * 3
    assert same(first, from_files(root))
    n = {(r[0], r[1], r[2]): r[3] for r in first}
    assert n[("node-000", "temp_c", HOUR)] == 24  # 30 minus the 6 late ones
    # Late readings re-roll the hour: its rows are replaced, the other hour's stay.
    await store.add(late)
    r = await store.rollup.run_once()
    assert [x.hour for x in r.rolled] == [HOUR, HOUR + HOUR_MS]
    again = stats(store)
    assert same(again, from_files(root))
    assert {(r[0], r[1], r[2]): r[3] for r in again}[("node-000", "temp_c", HOUR)] == 30
    assert sum(r[3] for r in again) == len(msgs) * 3


async def test_only_rows_in_the_file_count(store: Store) -> None:
    """Stats cover the messages with id <= max_id: what the file holds, nothing later."""
    await store.add(fleet(HOUR, 2, 10))
    await store.rollup.run_once()
    await store.add(fleet(HOUR, 2, 3, first_seq=50))  # late, not rolled yet
    assert sum(r[3] for r in stats(store)) == 2 * 10 * 3
    max_id = store.one("SELECT max_id FROM parquet_hours WHERE hour = ?", HOUR)
    assert store.one("SELECT count(*) FROM readings r JOIN messages m ON m.id = r.message_id "
                     "WHERE m.id <= ?", max_id) == 2 * 10 * 3


async def test_dropped_hours_lose_their_stats_in_the_same_transaction(make_store) -> None:  # type: ignore[no-untyped-def]
    s: Store = await make_store("[retention]\nparquet_days = 0.5\n")
    await s.add(fleet(HOUR, 2, 5) + fleet(HOUR + 20 * HOUR_MS, 2, 5, first_seq=5))
    r = await s.rollup.run_once()
    assert r.dropped_hours == 1
    assert {row[2] for row in stats(s)} == {HOUR + 20 * HOUR_MS}
    assert s.one("SELECT count(*) FROM hour_stats WHERE hour = ?", HOUR) == 0


async def test_budget_drop_removes_stats(make_store) -> None:  # type: ignore[no-untyped-def]
    from gateway.rollup import retention

    s: Store = await make_store()
    await s.add(fleet(HOUR, 2, 5) + fleet(HOUR + HOUR_MS, 2, 5, first_seq=5))
    await s.rollup.run_once()

    def drop(conn: sqlite3.Connection) -> None:
        hours = retention.parquet_to_drop(conn, delivered=None, need_bytes=1)
        retention.drop_hours(conn, hours, 0, "budget_dropped_hours")

    await s.writer.execute(drop)
    assert {row[2] for row in stats(s)} == {HOUR + HOUR_MS}


async def test_backfill_of_hours_rolled_before_schema_4(make_store) -> None:  # type: ignore[no-untyped-def]
    """A store upgraded to schema 4 has catalogued hours without stats, one of them pruned (its
    rows are only in the file): the next pass records them, and the files stay byte-identical."""
    s: Store = await make_store("[retention]\nhot_hours = 30\n")
    old, recent = HOUR - 10 * HOUR_MS, HOUR
    await s.add(fleet(old, 3, 20) + fleet(recent, 3, 20, first_seq=20))
    # Retention as it ran before the upgrade: the old hour's rows left SQLite.
    r = await s.rollup.run_once()
    assert r.pruned_messages == 3 * 20
    root = s.data_dir / "parquet"
    want = from_files(root)
    files = {h: (root / relpath(h)).read_bytes() for h in (old, recent)}
    assert s.one("SELECT pruned FROM parquet_hours WHERE hour = ?", old) == 1
    # What migration 4 leaves: the table, empty.
    await s.writer.execute(lambda c: c.execute("DELETE FROM hour_stats"))
    r = await s.rollup.run_once()
    assert sorted(x.hour for x in r.rolled) == [old, recent]
    assert same(stats(s), want)
    assert {h: (root / relpath(h)).read_bytes() for h in (old, recent)} == files
    r = await s.rollup.run_once()
    assert r.rolled == []  # backfilled once


async def test_cli_rollup_records_stats(store: Store) -> None:
    await store.add(fleet(HOUR, 3, 10))
    r = subprocess.run([sys.executable, "-m", "gateway", "rollup", "--hour", label(HOUR),
                        "--data-dir", str(store.data_dir)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert same(stats(store), from_files(store.data_dir / "parquet"))
    assert pq.ParquetFile(store.data_dir / "parquet" / relpath(HOUR)).metadata.num_rows == 90

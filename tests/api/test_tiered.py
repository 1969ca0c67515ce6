"""Hot and cold reads: ``TieredSource`` against the raw rows, through hour_stats, Parquet of pruned
hours (the real rollup and retention) and the HTTP API.

The reference is ``SqliteSource`` over the same rows while they are all hot, or what was
published once they are pruned.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.api.cold import ColdReader, ColdReadError
from gateway.api.query import Page, ReadingsQuery, Series, SeriesQuery, SqliteSource
from gateway.api.tiered import TieredSource
from gateway.rollup.hours import HOUR_MS, hour_of, parquet_root
from gateway.store.writer import Unit, now_ms
from tests.conftest import free_port
from tests.rollup.conftest import (  # noqa: F401  (fixtures used by name)
    HOUR,
    Store,
    _close_writers,
    fleet,
    make_store,
    msg,
)

PAST_MS = 30 * 86_400_000
FUTURE_MS = 86_400_000
MIN = 60_000


def ro(s: Store) -> sqlite3.Connection:
    db = s.data_dir / "roost.sqlite3"
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)


READERS: list[ColdReader] = []


def tiered(s: Store) -> TieredSource:
    cold = ColdReader(s.data_dir / "roost.sqlite3", parquet_root(s.data_dir))
    READERS.append(cold)
    return TieredSource(cold, PAST_MS, FUTURE_MS)


@pytest.fixture(autouse=True)
def _close_readers() -> Iterator[None]:
    yield
    while READERS:
        READERS.pop().close()


def assert_same(got: list[Series], want: list[Series]) -> None:
    """Equal buckets; averages to float rounding (sums are added in another order)."""
    assert [(x.node, x.metric) for x in got] == [(x.node, x.metric) for x in want]
    for g, w in zip(got, want, strict=True):
        assert (g.t, g.count, g.min, g.max) == (w.t, w.count, w.min, w.max), (g.node, g.metric)
        for a, b in zip(g.avg, w.avg, strict=True):
            assert abs(a - b) <= 1e-9 * max(1.0, abs(b))


def all_pages(source: Any, conn: sqlite3.Connection, q: ReadingsQuery) -> list[Page]:
    pages = []
    while True:
        page = source.readings(conn, q)
        pages.append(page)
        if page.next_cursor is None:
            return pages
        from gateway.api.query import decode_cursor

        q = ReadingsQuery(q.nodes, q.metrics, q.start, q.end, q.limit,
                          decode_cursor(page.next_cursor))  # fmt: skip


def ident(page_rows: list[Any]) -> list[tuple[Any, ...]]:
    """A reading without its message id (Parquet rows have none)."""
    return [(r.node, r.metric, r.ts, r.received, r.boot, r.seq, r.flags, r.value)
            for r in page_rows]  # fmt: skip


QUERIES = [
    # (start, end, bucket): whole hours, ragged edges, buckets of several hours, sub-hour.
    (HOUR - 3 * HOUR_MS, HOUR + 2 * HOUR_MS, HOUR_MS),
    (HOUR - 3 * HOUR_MS + 17 * MIN, HOUR + HOUR_MS + 5 * MIN, HOUR_MS),
    (HOUR - 4 * HOUR_MS, HOUR + 2 * HOUR_MS, 2 * HOUR_MS),
    (HOUR - 5 * 86_400_000, HOUR + 86_400_000, 86_400_000),
    (HOUR - 3 * HOUR_MS, HOUR + 2 * HOUR_MS, 5 * MIN),
]


async def fake_roll(s: Store, hours: list[int], *, scan: bool = True) -> None:
    """What the rollup records for ``hours`` (catalog row; hour_stats of the rows in the accepted
    window, as the worker writes them), in SQL; with ``scan``, also what its scan records."""

    def job(conn: sqlite3.Connection) -> None:
        if scan:
            scan_to_top(conn)
        for h in hours:
            (max_id,) = conn.execute(
                "SELECT max(id) FROM messages WHERE ts >= ? AND ts < ?", (h, h + HOUR_MS)
            ).fetchone()
            conn.execute(
                "INSERT INTO parquet_hours (hour, path, rows, bytes, sha256, max_id, rolled_at) "
                "VALUES (?, 'none', 1, 1, '', ?, 0)",
                (h, max_id),
            )
            conn.execute(
                "INSERT INTO hour_stats SELECT m.node_ref, r.metric_ref, ?, count(*), "
                "sum(r.value), min(r.value), max(r.value) FROM messages m "
                "JOIN readings r ON r.message_id = m.id WHERE m.ts >= ? AND m.ts < ? "
                "AND m.id <= ? AND m.ts BETWEEN m.received - ? AND m.received + ? GROUP BY 1, 2",
                (h, h, h + HOUR_MS, max_id, PAST_MS, FUTURE_MS),
            )
            conn.execute("DELETE FROM rollup_todo WHERE hour = ?", (h,))

    await s.writer.execute(job)


def scan_to_top(conn: sqlite3.Connection) -> None:
    """The rollup's scan: due hours of in-window rows, out-of-window ones listed as excluded."""
    row = conn.execute("SELECT value FROM rollup_state WHERE name = 'scanned_id'").fetchone()
    lo = row[0] if row else 0
    (top,) = conn.execute("SELECT max(id) FROM messages").fetchone()
    conn.execute(
        "INSERT OR IGNORE INTO rollup_excluded SELECT id, received FROM messages "
        "WHERE id > ? AND id <= ? AND NOT ts BETWEEN received - ? AND received + ?",
        (lo, top, PAST_MS, FUTURE_MS),
    )
    conn.execute(
        "INSERT INTO rollup_todo SELECT ts - ts % ? AS h, max(id) FROM messages "
        "WHERE id > ? AND id <= ? AND ts BETWEEN received - ? AND received + ? GROUP BY h "
        "ON CONFLICT (hour) DO UPDATE SET max_id = max(max_id, excluded.max_id)",
        (HOUR_MS, lo, top, PAST_MS, FUTURE_MS),
    )
    conn.execute("INSERT OR REPLACE INTO rollup_state VALUES ('scanned_id', ?)", (top,))


async def test_hour_stats_path_equals_raw_rows_with_late_data(make_store) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    s: Store = await make_store()
    hours = [HOUR - 2 * HOUR_MS, HOUR - HOUR_MS, HOUR]
    msgs = [m for h in hours for m in fleet(h, 3, 24, first_seq=(h - hours[0]) // HOUR_MS * 24)]
    late_todo = [m for m in msgs if m.t < hours[1] and m.seq % 5 == 2]
    late_new = [m for m in msgs if hours[1] <= m.t < hours[2] and m.seq % 7 == 3]
    await s.add([m for m in msgs if m not in late_todo and m not in late_new])
    await s.add(fleet(HOUR + HOUR_MS, 2, 10, first_seq=500))  # an hour not rolled

    async def sampled_long_before_received(seq: int, ts: int) -> None:
        unit = Unit([msg("node-001", 2, seq, ts, temp_c=90.5 + seq)], now_ms() + 40 * 86_400_000)
        await s.writer.submit(unit)
        await s.writer.drain()

    # Scanned before the roll, so listed in rollup_excluded; never in hour_stats.
    await sampled_long_before_received(0, hours[1] + 5 * MIN)  # an hour not due again
    await fake_roll(s, hours[:2])
    # Late rows the rollup has scanned: their hour is due again.
    await s.add(late_todo)
    await s.writer.execute(scan_to_top)
    # Committed after the last scan, before its hour was rolled: in max_id, not in the file.
    await sampled_long_before_received(1, hours[2] + 7 * MIN)
    await fake_roll(s, hours[2:], scan=False)
    # Late rows not scanned yet.
    await s.add(late_new)
    conn = ro(s)
    src, raw = tiered(s), SqliteSource()
    for start, end, b in QUERIES:
        for nodes, metrics in [((), ()), (("node-001",), ("temp_c",)), (("node-002",), ())]:
            q = SeriesQuery(nodes, metrics, start, end, b)
            assert_same(src.series(conn, q), raw.series(conn, q))
    # The hourly answer really comes from hour_stats: change them and it changes.
    await s.writer.execute(lambda c: c.execute("UPDATE hour_stats SET max = max + 100"))
    q = SeriesQuery((), (), *QUERIES[0][:2], HOUR_MS)
    assert src.series(conn, q)[0].max != raw.series(conn, q)[0].max
    conn.close()


async def published_rows(s: Store, conn: sqlite3.Connection, q: ReadingsQuery) -> list[Any]:
    return [r for p in all_pages(SqliteSource(), conn, q) for r in p.readings]


async def test_pruned_hours_read_from_parquet_through_the_real_rollup(make_store) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    s: Store = await make_store("[retention]\nhot_hours = 1\n")
    hours = [HOUR - 2 * HOUR_MS, HOUR - HOUR_MS, HOUR]
    msgs = [m for h in hours for m in fleet(h, 3, 20, first_seq=(h - hours[0]) // HOUR_MS * 20)]
    late = [m for m in msgs if hours[1] <= m.t < hours[2] and m.seq % 6 == 1]
    # Readings of the current hour: not rolled yet, whenever the test runs.
    hot_now = [msg("node-000", 1, 900 + i, hour_of(now_ms()) + i * 100, temp_c=21.0 + i)
               for i in range(10)]  # fmt: skip
    await s.add([m for m in msgs if m not in late] + hot_now)
    everything = ReadingsQuery((), (), HOUR - 3 * HOUR_MS, now_ms() + HOUR_MS, 7)
    conn = ro(s)
    on_time = await published_rows(s, conn, everything)
    await s.add(late)
    raw = SqliteSource()
    want_series = {
        (start, end, b): raw.series(conn, SeriesQuery((), (), start, end, b))
        for start, end, b in QUERIES
    }

    # Roll without the late rows, prune, then let them arrive again: the pruned hour has a
    # file and hot rows newer than it.
    def forget(c: sqlite3.Connection) -> None:
        where = f"ts >= {hours[1]} AND ts < {hours[2]} AND seq % 6 = 1"
        ids = f"SELECT id FROM messages WHERE {where}"
        c.execute(f"DELETE FROM readings WHERE message_id IN ({ids})")
        c.execute(f"DELETE FROM messages WHERE {where}")

    await s.writer.execute(forget)
    r = await s.rollup.run_once(retention_too=False)
    assert [x.hour for x in r.rolled] == hours
    # Rolled, still hot: the real rollup's hour_stats give what the raw rows give.
    assert conn.execute("SELECT count(DISTINCT hour) FROM hour_stats").fetchone()[0] == 3
    src = tiered(s)
    for start, end, b in QUERIES:
        q = SeriesQuery((), (), start, end, b)
        assert_same(src.series(conn, q), raw.series(conn, q))
    r = await s.rollup.run_once()
    assert r.pruned_messages == len(msgs) - len(late)
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == len(hot_now)
    await s.add(late)
    late_rows = [r for r in await published_rows(s, conn, everything) if r.ts < hours[2]]
    assert len(late_rows) == len(late) * 3
    want_rows = sorted(on_time + late_rows, key=lambda r: (r.ts, r.node, r.boot, r.seq, r.metric))

    def check() -> None:
        pages = all_pages(src, conn, everything)
        got = [r for p in pages for r in p.readings]
        assert ident(got) == ident(want_rows)
        # Some pages hold cold rows and hot rows together: the cursor crosses the boundary.
        assert any({r.id is None for r in p.readings} == {True, False} for p in pages)
        assert sum(r.id is not None for r in got) == len(late) * 3 + len(hot_now)
        for (start, end, b), want in want_series.items():
            assert_same(src.series(conn, SeriesQuery((), (), start, end, b)), want)
        one = ReadingsQuery(("node-002",), ("rh_pct",), hours[1] + 7 * MIN, hours[2] + 9 * MIN, 5)
        got_one = [r for p in all_pages(src, conn, one) for r in p.readings]
        assert ident(got_one) == ident(
            [r for r in want_rows if r.node == "node-002" and r.metric == "rh_pct"
             and one.start <= r.ts < one.end]
        )  # fmt: skip

    check()
    # The late rows rolled in (merged with the file) and pruned: the same answers.
    r = await s.rollup.run_once()
    assert [x.hour for x in r.rolled] == [hours[1]]
    check_late_pruned = conn.execute(
        "SELECT count(*) FROM messages WHERE ts < ?", (hours[2] + HOUR_MS,)
    ).fetchone()[0]
    assert check_late_pruned == 0
    pages = all_pages(src, conn, everything)
    assert ident([r for p in pages for r in p.readings]) == ident(want_rows)
    for (start, end, b), want in want_series.items():
        assert_same(src.series(conn, SeriesQuery((), (), start, end, b)), want)

    # Through HTTP: readings pages and the CSV export span both tiers.
    from gateway.api.server import ApiServer

    port = free_port()
    settings = s.settings
    import msgspec

    settings = msgspec.structs.replace(
        settings, http=msgspec.structs.replace(settings.http, host="127.0.0.1", port=port)
    )
    api = ApiServer(settings, s.data_dir)
    task = asyncio.create_task(api.serve())
    await api.bound.wait()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            got: list[dict[str, Any]] = []
            params: dict[str, Any] = {"start": everything.start, "end": everything.end,
                                      "limit": 11}  # fmt: skip
            while True:
                body = (await c.get("/api/readings", params=params)).json()
                got += body["readings"]
                if body["next_cursor"] is None:
                    break
                params["cursor"] = body["next_cursor"]
            assert [(g["node"], g["metric"], g["ts"], g["seq"], g["value"]) for g in got] == [
                (w.node, w.metric, w.ts, w.seq, w.value) for w in want_rows
            ]
            text = (await c.get("/api/export", params={"start": everything.start,
                                                       "end": everything.end})).text  # fmt: skip
            rows = list(csv.DictReader(io.StringIO(text)))
            assert [(x["node_id"], x["metric"], int(x["ts"]), float(x["value"])) for x in rows] == [
                (w.node, w.metric, w.ts, w.value) for w in want_rows
            ]
            series = (await c.get("/api/series", params={"start": QUERIES[4][0],
                      "end": QUERIES[4][1], "bucket": "5m"})).json()  # fmt: skip
            want5 = want_series[QUERIES[4]]
            assert [x["count"] for x in series["series"]] == [w.count for w in want5]
            stats = (await c.get("/api/stats")).json()
            assert stats["cold"]["reads"] >= 3 and stats["cold"]["errors"] == 0
    finally:
        await api.stop()
        await task
        api.close()
    conn.close()


async def test_damaged_file_is_a_clear_error_and_the_reader_goes_when_idle(make_store) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    s: Store = await make_store("[retention]\nhot_hours = 1\n")
    await s.add(fleet(HOUR, 2, 12))
    r = await s.rollup.run_once()
    assert r.pruned_messages == 24
    cold = ColdReader(s.data_dir / "roost.sqlite3", parquet_root(s.data_dir), idle_s=0.3)
    READERS.append(cold)
    src = TieredSource(cold, PAST_MS, FUTURE_MS)
    conn = ro(s)
    q = ReadingsQuery((), (), HOUR, HOUR + HOUR_MS, 1000)
    assert len(src.readings(conn, q).readings) == 2 * 12 * 3
    assert cold.running and cold.starts == 1
    # The same reader answers the next page; it leaves when idle (pyarrow's memory with it).
    assert len(src.readings(conn, q).readings) == 72 and cold.starts == 1
    await asyncio.sleep(1.0)
    assert not cold.running
    # A damaged file (same size, other bytes): a ColdReadError naming the problem, counted.
    path = s.data_dir / "parquet" / r.rolled[0].path
    good = path.read_bytes()
    path.write_bytes(b"\0" * len(good))
    with pytest.raises(ColdReadError, match="reading Parquet failed"):
        src.readings(conn, q)
    assert cold.errors == 1 and cold.last_error
    # A file that changed size (re-rolled or dropped under the query): retried, then an error.
    path.write_bytes(good + b"x")
    with pytest.raises(ColdReadError, match="kept changing"):
        src.series(conn, SeriesQuery((), (), HOUR - HOUR_MS, HOUR + 2 * HOUR_MS, 5 * MIN))
    path.write_bytes(good)
    assert sum(x.count[0] for x in src.series(conn, SeriesQuery((), (), HOUR, HOUR + HOUR_MS,
                                                                HOUR_MS))) == 72  # fmt: skip
    conn.close()


def test_the_gateway_never_imports_pyarrow() -> None:
    """The gateway process (service, API, cold reader client) loads no pyarrow (~83 MB)."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c",
         "import sys, gateway.service, gateway.api.app, gateway.api.tiered, gateway.api.cold; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyarrow'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert r.stdout.strip() == "[]"


async def test_hour_partly_pruned_reads_each_row_once(make_store) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Retention deleted only what the sink delivered: the hour is half in SQLite, whole in its
    file. Each reading comes once (from the file), the rest of SQLite's rows are skipped."""
    s: Store = await make_store(
        '[retention]\nhot_hours = 1\n[[sinks]]\nname = "cloud"\ntype = "mqtt"\n'
        'url = "mqtt://127.0.0.1:1"\n'
    )
    hours = [HOUR - HOUR_MS, HOUR]
    await s.add([m for h in hours for m in fleet(h, 3, 20, first_seq=(h - hours[0]) // 36_000)])
    conn = ro(s)
    q = ReadingsQuery((), (), hours[0], hours[1] + HOUR_MS, 9)
    want = [r for p in all_pages(SqliteSource(), conn, q) for r in p.readings]
    want_series = {
        b: SqliteSource().series(conn, SeriesQuery((), (), hours[0] + 7 * MIN, q.end, b))
        for b in (5 * MIN, HOUR_MS, 86_400_000)
    }
    ids = sorted(x for (x,) in conn.execute("SELECT id FROM messages"))
    # The sink delivered the first 90 messages: retention may delete those, no more.
    await s.writer.execute(lambda c: c.execute(
        "INSERT INTO sink_cursors (name, type, cursor) VALUES ('cloud', 'mqtt', ?)",
        (ids[89],)))  # fmt: skip
    r = await s.rollup.run_once()
    assert r.pruned_messages == 90 and len(r.rolled) == 2
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 30
    assert conn.execute("SELECT sum(pruned) FROM parquet_hours").fetchone()[0] == 2
    src = tiered(s)
    got = [r for p in all_pages(src, conn, q) for r in p.readings]
    assert ident(got) == ident(want)
    assert all(r.id is None for r in got)  # the files hold them all: none twice
    for b, w in want_series.items():
        assert_same(src.series(conn, SeriesQuery((), (), hours[0] + 7 * MIN, q.end, b)), w)
    conn.close()

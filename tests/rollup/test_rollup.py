"""Rollup: round trip through the real broker, idempotence, late data, faults, retention."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.broker.managed import ManagedBroker
from gateway.rollup.hours import HOUR_MS, label, relpath
from gateway.service import Gateway
from gateway.store.writer import now_ms
from tests.conftest import InProcessGateways, wait_for
from tests.gateway.helpers import counter, publish_all
from tests.rollup.conftest import HOUR, Store, duck, fleet, msg

REPO = Path(__file__).resolve().parents[2]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_rows(s: Store, hour: int) -> list[tuple[object, ...]]:
    conn = s.db()
    try:
        return conn.execute(
            "SELECT n.node_id, k.name, m.ts, r.value, m.boot, m.seq, m.received, m.flags "
            "FROM messages m JOIN readings r ON r.message_id = m.id JOIN nodes n USING (node_ref) "
            "JOIN metrics k USING (metric_ref) WHERE m.ts >= ? AND m.ts < ? "
            "ORDER BY n.node_id, k.name, m.ts, m.boot, m.seq", (hour, hour + HOUR_MS)
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture
async def gateway(gateways: InProcessGateways) -> Gateway:
    # The test runs the rollup passes itself. The gateway may set up its rollup after ingest
    # is connected (imported in a thread while ingest starts): wait for both.
    return await gateways.start("[rollup]\nenabled = false\n",
                                ready=lambda gw: getattr(gw, "rollup", None) is not None)


@pytest.mark.integration
async def test_round_trip_through_the_broker_read_back_by_duckdb(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path
) -> None:
    items = []
    for n in range(3):
        for s in range(40):
            body = {"b": 2, "s": s, "t": HOUR + s * 60_000 + n, "u": s * 1000,
                    "m": {"temp_c": round(20.1 + s / 10, 1), "rh_pct": 40.5 + n}}
            items.append((f"roost/v1/gw-{n}/readings", json.dumps(body).encode()))
    assert await publish_all(broker.port, "rollup-pub", items) == 0
    d = tmp_path / "data"
    await wait_for(lambda: counter(d, "rows") == 240, what="240 rows stored")
    result = await gateway.rollup.run_once()
    assert [label(r.hour) for r in result.rolled] == [label(HOUR)]
    got = duck(d / "parquet")
    conn = sqlite3.connect(f"file:{d / 'roost.sqlite3'}?mode=ro", uri=True)
    want = conn.execute(
        "SELECT n.node_id, k.name, m.ts, r.value, m.boot, m.seq, m.received, m.flags "
        "FROM messages m JOIN readings r ON r.message_id = m.id JOIN nodes n USING (node_ref) "
        "JOIN metrics k USING (metric_ref) ORDER BY n.node_id, k.name, m.ts").fetchall()
    conn.close()
    assert len(got) == 240
    assert [g[:8] for g in got] == want  # same rows, same values, same order
    assert {(str(g[8]), int(g[9])) for g in got} == {(label(HOUR)[:10], int(label(HOUR)[11:]))}


async def test_schema_layout_and_encoding(store: Store) -> None:
    import pyarrow.parquet as pq

    await store.add(fleet(HOUR, 5, 30))
    await store.rollup.run_once()
    path = store.data_dir / "parquet" / relpath(HOUR)
    pf = pq.ParquetFile(path)
    assert [f"{f.name}: {f.type}" for f in pf.schema_arrow] == [
        "ts: timestamp[ms, tz=UTC]", "node_id: string", "metric: string", "value: double",
        "boot: int32", "seq: int64", "received: timestamp[ms, tz=UTC]", "flags: int32"]
    col = pf.metadata.row_group(0).column(1)
    assert col.compression == "ZSTD"
    assert "RLE_DICTIONARY" in col.encodings
    assert col.statistics is not None and col.statistics.min == "node-000"
    assert pf.metadata.num_rows == 5 * 30 * 3
    # In the catalog with its checksum, and the todo list is empty.
    assert store.one("SELECT sha256 FROM parquet_hours WHERE hour = ?", HOUR) == sha(path)
    assert store.one("SELECT count(*) FROM rollup_todo") == 0


async def test_idempotent_and_late_data_gives_the_on_time_bytes(make_store) -> None:  # type: ignore[no-untyped-def]
    s: Store = await make_store()
    all_msgs = fleet(HOUR, 4, 50)
    late = [m for m in all_msgs if m.seq % 7 == 3]
    await s.add([m for m in all_msgs if m.seq % 7 != 3])
    await s.rollup.run_once()
    path = s.data_dir / "parquet" / relpath(HOUR)
    before = sha(path)
    # Rolling the same hour again: byte-identical.
    r = await s.rollup.run_once(hour=HOUR)
    assert len(r.rolled) == 1 and sha(path) == before
    # Late readings re-roll the hour.
    await s.add(late)
    r = await s.rollup.run_once()
    assert [x.hour for x in r.rolled] == [HOUR]
    assert len(duck(s.data_dir / "parquet")) == len(all_msgs) * 3
    late_sha = sha(path)
    assert late_sha != before
    # The same rows rolled in one go (a copy of the store, nothing rolled) give the same bytes.
    ref_dir = s.data_dir.parent / "ref"
    ref_dir.mkdir()
    src, dst = s.db(), sqlite3.connect(ref_dir / "roost.sqlite3")
    src.backup(dst)
    src.close()
    dst.execute("DELETE FROM parquet_hours")
    dst.execute("DELETE FROM rollup_state")
    dst.commit()
    dst.close()
    ref: Store = await make_store(data_dir=ref_dir)
    await ref.rollup.run_once()
    assert sha(ref_dir / "parquet" / relpath(HOUR)) == late_sha


async def test_late_data_after_retention_merges_with_the_file(make_store) -> None:  # type: ignore[no-untyped-def]
    s: Store = await make_store("[retention]\nhot_hours = 1\n")
    all_msgs = fleet(HOUR, 3, 40)
    late = [m for m in all_msgs if m.seq in (5, 17)]
    await s.add([m for m in all_msgs if m.seq not in (5, 17)])
    on_time = store_rows(s, HOUR)
    r = await s.rollup.run_once()
    assert r.pruned_messages == 3 * 38
    assert s.one("SELECT count(*) FROM messages") == 0
    assert s.one("SELECT pruned FROM parquet_hours") == 1
    await s.add(late)
    late_rows = store_rows(s, HOUR)
    await s.rollup.run_once(retention_too=False)
    got = [g[:8] for g in duck(s.data_dir / "parquet")]
    assert got == sorted(on_time + late_rows, key=lambda r: (r[0], r[1], r[2]))
    assert len(got) == len(all_msgs) * 3


async def test_catches_up_every_missed_hour_and_waits_for_grace(store: Store) -> None:
    current = HOUR + 24 * HOUR_MS
    await store.add(fleet(HOUR - 2 * HOUR_MS, 2, 10) + fleet(HOUR, 2, 10, first_seq=10)
                    + fleet(current, 2, 5, first_seq=20))
    r = await store.rollup.run_once(now=current + HOUR_MS + 60_000)  # closed, inside grace
    assert sorted(x.hour for x in r.rolled) == [HOUR - 2 * HOUR_MS, HOUR]
    r = await store.rollup.run_once(now=current + HOUR_MS + 301_000)
    assert [x.hour for x in r.rolled] == [current]


async def test_out_of_window_timestamps_are_quarantined_not_rolled(store: Store) -> None:
    now = now_ms()
    await store.add([*fleet(HOUR, 2, 5), msg("bad", 1, 0, 86_400_000, temp_c=1.0),
                     msg("bad", 1, 1, now + 400 * 86_400_000, temp_c=2.0)])
    r = await store.rollup.run_once()
    assert r.quarantined == 2
    assert [x.hour for x in r.rolled] == [HOUR]
    assert store.one("SELECT count(*) FROM quarantine WHERE node_id = 'bad'") == 2
    assert all(row[0] != "bad" for row in duck(store.data_dir / "parquet"))
    assert store.one("SELECT count(*) FROM parquet_hours") == 1


async def test_deleted_and_truncated_files_are_repaired_and_verify_reports(store: Store) -> None:
    await store.add(fleet(HOUR, 3, 20) + fleet(HOUR + HOUR_MS, 3, 20, first_seq=20))
    await store.rollup.run_once()
    a = store.data_dir / "parquet" / relpath(HOUR)
    b = store.data_dir / "parquet" / relpath(HOUR + HOUR_MS)
    good_a, good_b = sha(a), sha(b)
    a.unlink()
    with b.open("r+b") as f:
        f.truncate(b.stat().st_size // 2)
    verify = subprocess.run([sys.executable, "-m", "gateway", "parquet", "verify", "--data-dir",
                             str(store.data_dir)], capture_output=True, text=True, check=False)
    assert verify.returncode == 1
    assert "file is missing" in verify.stdout and "bytes, the catalog says" in verify.stdout
    r = await store.rollup.run_once()
    assert len(r.problems) == 2 and len(r.rolled) == 2
    assert (sha(a), sha(b)) == (good_a, good_b)
    verify = subprocess.run([sys.executable, "-m", "gateway", "parquet", "verify", "--data-dir",
                             str(store.data_dir)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "0 problems" in verify.stdout


async def test_kill_9_during_rollup_leaves_no_visible_file_and_next_run_repairs(
    store: Store,
) -> None:
    await store.add(fleet(HOUR, 50, 400))
    root = store.data_dir / "parquet"
    w = store.rollup.window
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.rollup.worker", str(store.data_dir / "roost.sqlite3"),
         str(root), str(HOUR), "--past-ms", str(w.past_ms), "--future-ms", str(w.future_ms),
         "--row-group-rows", "1000"], stdout=subprocess.PIPE)
    part = root / relpath(HOUR)
    await wait_for(lambda: any(part.parent.glob(".*.tmp")) if part.parent.exists() else False,
                   timeout=60, interval=0.005, what="a temporary file")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None and proc.stdout.read() == b""
    proc.stdout.close()
    assert not part.exists()  # readers never see a half file
    assert store.one("SELECT count(*) FROM parquet_hours") == 0
    r = await store.rollup.run_once()
    assert [x.hour for x in r.rolled] == [HOUR]
    assert not list(part.parent.glob(".*.tmp")) and not list(root.glob(".spill-*"))
    assert len(duck(root)) == 50 * 400 * 3


async def test_retention_never_deletes_undelivered_rows(make_store) -> None:  # type: ignore[no-untyped-def]
    s: Store = await make_store(
        '[retention]\nhot_hours = 1\n[[sinks]]\nname = "cloud"\ntype = "mqtt"\n'
        'url = "mqtt://127.0.0.1:1"\n')
    await s.add(fleet(HOUR, 2, 30))
    r = await s.rollup.run_once()
    assert len(r.rolled) == 1 and r.pruned_messages == 0  # no cursor yet: nothing delivered
    assert s.one("SELECT count(*) FROM messages") == 60
    ids = sorted(x[0] for x in s.db().execute("SELECT id FROM messages"))
    await s.writer.execute(lambda c: c.execute(
        "INSERT INTO sink_cursors (name, type, cursor) VALUES ('cloud', 'mqtt', ?)", (ids[19],)))
    r = await s.rollup.run_once()
    assert r.pruned_messages == 20
    assert s.one("SELECT min(id) FROM messages") == ids[20]
    assert s.one("SELECT count(*) FROM readings") == 40 * 3
    # Rows of an hour that is not rolled stay, delivered or not.
    await s.add(fleet(HOUR + 26 * HOUR_MS, 1, 3, first_seq=100))  # the current hour: not closed
    await s.writer.execute(lambda c: c.execute("UPDATE sink_cursors SET cursor = 10000000"))
    await s.rollup.run_once()
    assert s.one("SELECT count(*) FROM messages") == 3


async def test_parquet_retention_by_age(make_store) -> None:  # type: ignore[no-untyped-def]
    s: Store = await make_store("[retention]\nparquet_days = 0.5\n")
    await s.add(fleet(HOUR, 2, 5) + fleet(HOUR + 20 * HOUR_MS, 2, 5, first_seq=5))
    r = await s.rollup.run_once()
    assert r.dropped_hours == 1
    assert not (s.data_dir / "parquet" / relpath(HOUR)).exists()
    assert (s.data_dir / "parquet" / relpath(HOUR + 20 * HOUR_MS)).exists()
    assert s.one("SELECT count(*) FROM parquet_hours WHERE dropped_at IS NOT NULL") == 1


async def test_cli_rollup_export_and_stats(store: Store, tmp_path: Path) -> None:
    await store.add(fleet(HOUR, 3, 10) + fleet(HOUR + HOUR_MS, 3, 10, first_seq=10))
    d = str(store.data_dir)
    r = subprocess.run([sys.executable, "-m", "gateway", "rollup", "--hour", label(HOUR),
                        "--data-dir", d], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "rolled 1 hours, 90 rows" in r.stdout
    # Hot (the second hour) and cold (the first) together, filtered.
    out = tmp_path / "x.csv"
    start = label(HOUR) + ":00"
    end = label(HOUR + 2 * HOUR_MS) + ":00"
    r = subprocess.run([sys.executable, "-m", "gateway", "export", "--start", start, "--end", end,
                        "--format", "csv", "--node", "node-001", "--metric", "temp_c", "-o",
                        str(out), "--data-dir", d], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 20 and all("node-001" in x and "temp_c" in x for x in lines[1:])
    pq_out = tmp_path / "x.parquet"
    r = subprocess.run([sys.executable, "-m", "gateway", "export", "--start", start, "--end", end,
                        "-o", str(pq_out), "--data-dir", d], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    import duckdb

    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(pq_out)]).fetchall() == [(180,)]
    con.close()
    r = subprocess.run([sys.executable, "-m", "gateway", "stats", "--json", "--data-dir", d],
                       capture_output=True, text=True, check=True)
    figures = json.loads(r.stdout)["rollup"]
    assert figures["parquet_hours"] == 1 and figures["budget_paused"] is False
    assert figures["pending_hours"] >= 1


async def test_merge_streams_the_old_file_in_small_batches_same_bytes(
    make_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """Re-rolling a pruned hour reads its old file batch by batch; how small the batches and
    sort buckets are does not change a byte of the result."""
    import pyarrow.parquet as pq

    from gateway.rollup import parquet

    s: Store = await make_store("[retention]\nhot_hours = 1\n")
    all_msgs = fleet(HOUR, 6, 40)
    late = [m for m in all_msgs if m.seq % 9 == 4]
    await s.add([m for m in all_msgs if m.seq % 9 != 4])
    on_time = store_rows(s, HOUR)
    await s.rollup.run_once()
    assert s.one("SELECT count(*) FROM messages") == 0  # the file is the only copy
    await s.add(late)
    want = sorted(on_time + store_rows(s, HOUR), key=lambda r: (r[0], r[1], r[2]))
    max_id = s.one("SELECT max_id FROM parquet_hours WHERE hour = ?", HOUR)
    db, root = s.data_dir / "roost.sqlite3", s.data_dir / "parquet"

    def merge(to: Path) -> str:
        shutil.copytree(root, to)
        r = parquet.roll_hour(db, to, HOUR, window=s.rollup.window, row_group_rows=100,
                              merge_after=max_id)
        assert r.rows == len(all_msgs) * 3
        return sha(to / relpath(HOUR))

    plain = merge(tmp_path / "plain")
    monkeypatch.setattr(parquet, "BATCH_ROWS", 7)
    monkeypatch.setattr(parquet, "SORT_ROWS", 50)  # many spilled buckets
    small = merge(tmp_path / "small")
    assert small == plain
    t = pq.read_table(tmp_path / "small" / relpath(HOUR))
    got = zip(t["node_id"].to_pylist(), t["metric"].to_pylist(),
              t["ts"].cast("int64").to_pylist(), t["value"].to_pylist(),
              t["boot"].to_pylist(), t["seq"].to_pylist(), strict=True)
    assert list(got) == [w[:6] for w in want]


async def test_export_streams_hot_and_cold_each_reading_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches (so both writers get many), a rolled hour with late readings still hot,
    and a hot hour: every reading once, in hour then node, metric, ts order, CSV header once."""
    import duckdb

    from gateway.rollup import export
    from gateway.store.reader import open_readonly

    second = HOUR + HOUR_MS
    msgs = fleet(HOUR, 3, 20) + fleet(second, 3, 20, first_seq=20)
    late = [m for m in msgs if (m.t or 0) < second and (m.seq or 0) % 4 == 0]
    await store.add([m for m in msgs if m not in late])
    await store.rollup.run_once(hour=HOUR)
    await store.add(late)  # hot rows of a rolled hour: not in its file yet
    want_first = store_rows(store, HOUR)
    want = set(want_first + store_rows(store, second))
    assert len(want) == len(msgs) * 3
    monkeypatch.setattr(export, "BATCH_ROWS", 16)
    root = store.data_dir / "parquet"
    conn = open_readonly(store.data_dir)
    try:
        n_pq = export.export(conn, root, HOUR, second + HOUR_MS, tmp_path / "x.parquet",
                             "parquet")
        n_csv = export.export(conn, root, HOUR, second + HOUR_MS, tmp_path / "x.csv", "csv")
    finally:
        conn.close()
    assert n_pq == n_csv == len(want)
    con = duckdb.connect()
    got = con.execute(
        "SELECT node_id, metric, epoch_ms(ts), value, boot, seq, epoch_ms(received), flags "
        "FROM read_parquet(?)", [str(tmp_path / "x.parquet")]).fetchall()
    from_csv = con.execute(
        "SELECT node_id, metric, epoch_ms(ts), value, boot, seq, epoch_ms(received), flags "
        "FROM read_csv(?)", [str(tmp_path / "x.csv")]).fetchall()
    con.close()
    assert len(got) == len(want) and set(got) == want and from_csv == got
    assert (tmp_path / "x.csv").read_text().count('"node_id"') == 1
    # The rolled hour first: its file's rows in order, then its late rows in order.
    first = got[: len(want_first)]
    assert {r[2] - r[2] % HOUR_MS for r in first} == {HOUR}
    in_file = len(want_first) - len(late) * 3
    assert first[:in_file] == sorted(first[:in_file], key=lambda r: (r[0], r[1], r[2]))
    assert first[in_file:] == sorted(first[in_file:], key=lambda r: (r[0], r[1], r[2]))
    assert got[len(want_first):] == sorted(got[len(want_first):], key=lambda r: (r[0], r[1], r[2]))
    assert not list(tmp_path.glob(".*.tmp"))


def start_worker(s: Store, *extra: str) -> subprocess.Popen[bytes]:
    w = s.rollup.window
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.rollup.worker", str(s.data_dir / "roost.sqlite3"),
         str(s.data_dir / "parquet"), str(HOUR), "--past-ms", str(w.past_ms), "--future-ms",
         str(w.future_ms), *extra], stdout=subprocess.PIPE)


async def test_kill_9_during_a_reroll_keeps_the_old_file_and_catalog(store: Store) -> None:
    await store.add(fleet(HOUR, 50, 300))
    await store.rollup.run_once()
    part = store.data_dir / "parquet" / relpath(HOUR)
    old = sha(part)
    entry = store.db().execute("SELECT sha256, rows, max_id FROM parquet_hours").fetchall()
    stats_before = store.one("SELECT sum(n) FROM hour_stats")
    await store.add(fleet(HOUR, 50, 100, first_seq=300))  # late: the hour is due again
    proc = start_worker(store, "--row-group-rows", "1000")
    await wait_for(lambda: any(part.parent.glob(".*.tmp")), timeout=60, interval=0.005,
                   what="a temporary file")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    assert sha(part) == old  # readers still see the whole old file
    assert store.db().execute("SELECT sha256, rows, max_id FROM parquet_hours").fetchall() == entry
    assert store.one("SELECT sum(n) FROM hour_stats") == stats_before == 50 * 300 * 3
    r = await store.rollup.run_once()
    assert [x.rows for x in r.rolled] == [50 * 400 * 3]
    assert store.one("SELECT sum(n) FROM hour_stats") == 50 * 400 * 3
    assert store.one("SELECT sha256 FROM parquet_hours") == sha(part)
    assert not list(part.parent.glob(".*.tmp"))


async def test_crash_between_rename_and_catalog_commit_is_recorded_next_run(
    store: Store,
) -> None:
    """The worker finished (the file is in place) but nothing recorded it, as when the gateway
    is killed while the worker runs: the file is unlisted, the hour still due, and the next
    run rolls it again (the same bytes) and records it with its stats."""
    await store.add(fleet(HOUR, 4, 30))
    proc = start_worker(store)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and json.loads(out)["rows"] == 4 * 30 * 3
    part = store.data_dir / "parquet" / relpath(HOUR)
    written = sha(part)
    assert store.one("SELECT count(*) FROM parquet_hours") == 0
    verify = subprocess.run([sys.executable, "-m", "gateway", "parquet", "verify", "--data-dir",
                             str(store.data_dir)], capture_output=True, text=True, check=False)
    assert "not in the catalog" in verify.stdout
    r = await store.rollup.run_once()
    assert [x.hour for x in r.rolled] == [HOUR]
    assert sha(part) == written == store.one("SELECT sha256 FROM parquet_hours")
    assert store.one("SELECT sum(n) FROM hour_stats") == 4 * 30 * 3


async def test_reading_by_id_range_or_by_index_gives_the_same_bytes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hour's rows are read by their id range when it is dense, else through the
    (node_ref, ts) index; late readings (high ids) and a sparse hour take both paths."""
    from gateway.rollup import parquet

    other = HOUR + HOUR_MS
    msgs = fleet(HOUR, 5, 20)
    # The hour's messages interleaved with four times as many of the next hour, plus late ones.
    mixed = []
    for i, m in enumerate(msgs):
        mixed.append(m)
        mixed += fleet(other, 1, 4, first_seq=1000 + i * 4)
    await store.add(mixed)
    await store.add(fleet(HOUR, 5, 3, first_seq=500))
    db = store.data_dir / "roost.sqlite3"
    conn = sqlite3.connect(db)
    extent = conn.execute(parquet._Extent.SQL.format(HOUR, HOUR + HOUR_MS)).fetchone()
    conn.close()
    assert extent[0] == 5 * 23 and extent[2] - extent[1] + 1 > 4 * extent[0]  # sparse

    def roll(to: str) -> tuple[str, int]:
        r = parquet.roll_hour(db, tmp_path / to, HOUR, window=store.rollup.window,
                              row_group_rows=50)
        return sha(tmp_path / to / relpath(HOUR)), r.rows

    by_index = roll("index")
    monkeypatch.setattr(parquet, "ID_SPAN_RATIO", 1000)
    assert roll("ids") == by_index
    assert by_index[1] == 5 * 23 * 3

"""Rollup: round trip through the real broker, idempotence, late data, faults, retention."""

from __future__ import annotations

import hashlib
import json
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
    # The test runs the rollup passes itself.
    return await gateways.start("[rollup]\nenabled = false\n")


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
    await store.add(fleet(HOUR, 2, 5) + [msg("bad", 1, 0, 86_400_000, temp_c=1.0),
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

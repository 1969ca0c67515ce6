"""The store writer on a real SQLite file, without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import CommandAck, Message, NodeStatus, Rejected
from gateway.store import schema
from gateway.store.reader import open_readonly, read_nodes, read_stats
from gateway.store.writer import CommitResult, StoreWriter, Unit


def msg(node: str, boot: int, seq: int, t: int | None = None, u: int | None = None,
        **metrics: float) -> Message:
    return Message(node, boot, seq, t, u, tuple((metrics or {"temp_c": 1.0}).items()))


@pytest.fixture
async def writer(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = StoreWriter(tmp_path / "roost.sqlite3", quarantine_raw_bytes=8)
    await w.open()
    yield w
    await w.close()


async def commit(w: StoreWriter, *items: object, at: int = 1_000_000) -> CommitResult:
    results: list[CommitResult] = []
    w.add_listener(results.append)
    acked: list[bool] = []
    await w._commit_with_retry([Unit(list(items), at, on_commit=lambda: acked.append(True))])  # type: ignore[arg-type]
    w._listeners.remove(results.append)
    assert acked == [True]
    return results[0]


async def test_duplicates_within_and_across_batches(writer: StoreWriter, tmp_path: Path) -> None:
    r = await commit(writer, msg("a", 1, 0), msg("a", 1, 1), msg("a", 1, 0))
    assert (r.messages, r.stored, r.duplicates, r.rows) == (3, 2, 1, 2)
    r = await commit(writer, msg("a", 1, 1), msg("a", 2, 1), msg("b", 1, 1))
    assert (r.stored, r.duplicates) == (2, 1)
    conn = open_readonly(tmp_path)
    s = read_stats(conn, tmp_path)
    assert (s.messages, s.stored, s.duplicates, s.rows, s.nodes) == (6, 4, 2, 4, 2)
    assert s.db_bytes > 0


async def test_large_batches_with_scattered_duplicates(
    writer: StoreWriter, tmp_path: Path
) -> None:
    # Several multi-row INSERT statements per table plus a remainder, with redeliveries of
    # earlier commits and repeats inside the batch landing in different statements.
    first = [msg("a", 1, s, t=1_000 + s, temp_c=s, rh_pct=-s) for s in range(150)]
    await commit(writer, *first)
    again = [msg("a", 1, s, t=1_000 + s, temp_c=s, rh_pct=-s) for s in range(100, 300)]
    again += [msg("a", 1, s, t=1_000 + s, temp_c=s, rh_pct=-s) for s in range(0, 300, 7)]
    r = await commit(writer, *again)
    assert (r.messages, r.stored, r.duplicates, r.rows) == (243, 150, 93, 300)
    assert sorted(m.seq for m in r.inserted) == list(range(150, 300))
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    got = conn.execute(
        "SELECT m.seq, group_concat(x.name || '=' || r.value, ',') FROM messages m "
        "JOIN readings r ON r.message_id = m.id JOIN metrics x USING (metric_ref) "
        "GROUP BY m.id ORDER BY m.seq"
    ).fetchall()
    conn.close()
    assert [seq for seq, _ in got] == list(range(300))
    assert all(
        sorted(vals.split(",")) == sorted([f"temp_c={float(seq)}", f"rh_pct={float(-seq)}"])
        for seq, vals in got
    )


async def test_ledger_counts_gaps_per_boot(writer: StoreWriter, tmp_path: Path) -> None:
    await commit(writer, *[msg("a", 1, s) for s in (0, 1, 4)], *[msg("a", 2, s) for s in (0, 2)])
    conn = open_readonly(tmp_path)
    assert read_stats(conn).seq_gaps == 2 + 1
    (node,) = read_nodes(conn)
    assert (node.node_id, node.messages, node.lost) == ("a", 5, 3)


async def test_time_derivation_and_flags(writer: StoreWriter, tmp_path: Path) -> None:
    await commit(writer, msg("a", 1, 0, t=10_000_000, u=1_000))
    await commit(writer, msg("a", 1, 1, u=61_000), msg("a", 2, 0, u=5), at=77)
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    rows = conn.execute("SELECT boot, seq, ts, flags FROM messages ORDER BY id").fetchall()
    assert rows == [(1, 0, 10_000_000, 0), (1, 1, 10_060_000, 1), (2, 0, 77, 2)]


async def test_latest_values_follow_sample_time(writer: StoreWriter, tmp_path: Path) -> None:
    await commit(writer, msg("a", 1, 1, t=2000, temp_c=2.0))
    await commit(writer, msg("a", 1, 0, t=1000, temp_c=1.0))  # late arrival of an older reading
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    assert conn.execute("SELECT ts, value FROM latest").fetchall() == [(2000, 2.0)]


async def test_status_ack_and_quarantine(writer: StoreWriter, tmp_path: Path) -> None:
    r = await commit(
        writer,
        NodeStatus("a", "online", fw="1.0", board="esp32", boot=3, rssi=-50),
        CommandAck("a", "c1", False, "nope"),
        Rejected("roost/v1/a/readings", b"0123456789abcdef", "bad", "a"),
    )
    assert r.quarantined == 1 and [s.state for s in r.statuses] == ["online"]
    await commit(writer, NodeStatus("a", "offline"))
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    assert conn.execute("SELECT state, fw, board, boot, rssi FROM nodes").fetchone() == (
        "offline", "1.0", "esp32", 3, -50)
    assert conn.execute("SELECT ok, error FROM commands WHERE id='c1'").fetchone() == (0, "nope")
    assert conn.execute("SELECT raw, raw_len FROM quarantine").fetchone() == (b"01234567", 16)


async def test_synthetic_ids_continue_across_restarts(tmp_path: Path) -> None:
    mapped = Message("tas", None, None, None, None, (("x", 1.0),), 12)
    for _ in range(2):
        w = StoreWriter(tmp_path / "roost.sqlite3")
        await w.open()
        await commit(w, mapped, mapped)
        await w.close()
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    assert [r[0] for r in conn.execute("SELECT seq FROM messages ORDER BY id")] == [0, 1, 2, 3]


async def test_failed_commit_is_retried_and_leaves_no_trace(
    writer: StoreWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import writer as wm

    real = wm._execute
    calls = 0

    def fail_once_midway(conn, plan, derived, raw_limit):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            # Fail after part of the transaction was written: nothing of it may remain.
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO nodes (node_ref, node_id, first_seen, last_seen) "
                             "VALUES (?, ?, ?, ?)", plan.new_nodes)
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn, plan, derived, raw_limit)

    monkeypatch.setattr(wm, "_execute", fail_once_midway)
    r = await commit(writer, msg("a", 1, 0), msg("b", 1, 0))
    assert calls == 2 and r.stored == 2 and writer.commit_errors == 1
    # The catalog was reloaded: the next commit still finds its references.
    r = await commit(writer, msg("a", 1, 1), msg("c", 1, 0))
    assert r.stored == 2
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    assert conn.execute("SELECT node_id, node_ref FROM nodes ORDER BY node_ref").fetchall() == [
        ("a", 1), ("b", 2), ("c", 3)]


def test_migrations_are_idempotent_and_refuse_newer(tmp_path: Path) -> None:
    conn = schema.connect(str(tmp_path / "s.db"))
    assert schema.migrate(conn) == 0
    assert schema.migrate(conn) == schema.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("INSERT INTO schema_version VALUES (999, 0)")
    with pytest.raises(RuntimeError, match="newer"):
        schema.migrate(conn)


async def test_execute_runs_a_job_in_one_transaction(writer: StoreWriter, tmp_path: Path) -> None:
    def job(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO counters VALUES ('custom', 5)")
        return 42

    assert await writer.execute(job) == 42

    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE counters SET value = 0 WHERE name = 'custom'")
        raise ValueError("nope")

    with pytest.raises(ValueError):
        await writer.execute(failing)
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    assert conn.execute("SELECT value FROM counters WHERE name='custom'").fetchone() == (5,)


# -- group commit: what run() puts into one transaction ---------------------------------------

#: A floor between commits far longer than any test: a transaction that waited for it would
#: hang the test (caught by the 30 s guard below) instead of passing slowly.
NEVER_MS = 600_000.0


def unit(seq: int, acked: list[int], node: str = "g") -> Unit:
    return Unit([msg(node, 1, seq)], 1_000_000, publishes=1, on_commit=lambda: acked.append(seq))


@contextlib.asynccontextmanager
async def running(w: StoreWriter) -> AsyncIterator[None]:
    """The writer task running (opened before, closed after); the body has 30 s."""
    task = asyncio.create_task(w.run())
    try:
        async with asyncio.timeout(30):
            yield
    finally:
        task.cancel()
        await w.close()


async def test_an_idle_writer_commits_a_lone_unit_at_once(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "roost.sqlite3", batch_max_ms=NEVER_MS)
    await w.open()
    acked: list[int] = []
    async with running(w):
        await w.submit(unit(0, acked))
        await w.drain()
    # One transaction for the one unit, and it did not wait for company.
    assert acked == [0] and (w.transactions, w.units, w.waits) == (1, 1, 0)


async def test_a_queued_backlog_commits_many_units_per_transaction(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "roost.sqlite3", batch_max_rows=50, batch_max_ms=0)
    await w.open()
    acked: list[int] = []
    for seq in range(200):  # queued before the writer runs: a backlog
        await w.submit(unit(seq, acked))
    async with running(w):
        await w.drain()
    # Group commit: whatever is queued goes into the transaction, up to batch_max_rows.
    assert acked == list(range(200)) and (w.transactions, w.units) == (4, 200)
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    assert conn.execute("SELECT count(*) FROM messages").fetchone() == (200,)


async def test_a_stream_right_after_a_commit_gathers_until_the_row_limit(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "roost.sqlite3", batch_max_rows=10, batch_max_ms=NEVER_MS)
    await w.open()
    acked: list[int] = []
    async with running(w):
        await w.submit(unit(0, acked))
        await w.drain()  # committed at once: the writer was idle
        for seq in range(1, 11):
            await w.submit(unit(seq, acked))
            await asyncio.sleep(0)  # let the writer take each one as it comes
        await w.drain()
    # Within batch_max_ms of the last commit the writer gathers rather than commit each unit;
    # batch_max_rows (10 one-row units) ended the wait, not the clock.
    assert acked == list(range(11)) and (w.transactions, w.waits) == (2, 1)


async def test_the_message_list_is_built_only_when_asked(writer: StoreWriter) -> None:
    r = await commit(writer, msg("a", 1, 0, temp_c=2.5), msg("a", 1, 0))
    assert r.committed is None  # no listener asked for it: no per-message tuples were built
    (m,) = r.stored_messages()
    assert (m.node_id, m.boot, m.seq, m.metrics) == ("a", 1, 0, (("temp_c", 2.5),))
    assert r.stored_messages() is r.committed


def test_derived_rows_follow_their_rules() -> None:
    # The latest value of each (node, metric) is the reading with the greatest time, the later
    # message winning a tie; the ledger holds each (node, boot, hour)'s lowest and highest seq
    # and its count. Checked against a brute-force computation over shuffled seqs and times,
    # equal receive times, several nodes, boots, hours and metrics.
    from gateway.store.plan import HOUR_MS, Catalog, derive, plan

    cat = Catalog(nodes={}, metrics={}, synthetic={}, next_id=1, next_node=1, next_metric=1)
    seqs: dict[tuple[str, int], int] = {}
    items = []
    for i in range(300):
        node, boot = f"n{i % 7}", 1 + (i // 7) % 2
        seq = seqs[(node, boot)] = seqs.get((node, boot), -1) + 1
        t: int | None = 1_763_800_000_000 + (i * 7919) % (3 * HOUR_MS)
        u: int | None = i * 1000
        if i % 11 == 0:
            t = None  # time derived from the boot's offset, once one is known
        if i % 5 == 0:
            t = u = None  # the receive time: the latest, and equal for every such message of a unit
        names = ("temp_c", "rh_pct", "lux")[: 1 + i % 3]
        values = {k: float(i + j) for j, k in enumerate(names)}
        items.append(msg(node, boot, seq, t=t, u=u, **values))
    random.Random(7).shuffle(items)  # out-of-order seqs and times within each hour
    later = 1_763_800_000_000 + 4 * HOUR_MS
    p = plan(cat, [(items[:150], later, 150), (items[150:], later + 5_000, 150)])
    d = derive(p.pending)

    readings = [(m.id, ref, v) for m in p.pending for ref, v in m.values]
    assert d.readings == readings and len(readings) == sum(len(m.metrics) for m in items)
    by_key: dict[tuple[int, int], list[tuple[int, int, float]]] = {}
    for m in p.pending:
        for ref, v in m.values:
            by_key.setdefault((m.node_ref, ref), []).append((m.ts, m.id, v))
    want_latest = {k: max(rows) for k, rows in by_key.items()}  # greatest ts, then later id
    assert {(n, k): (ts, i, v) for n, k, ts, v, i in d.latest} == want_latest
    assert len(d.latest) == len(want_latest)
    hours: dict[tuple[int, int, int], list[int]] = {}
    for m in p.pending:
        hours.setdefault((m.node_ref, m.boot, m.ts - m.ts % HOUR_MS), []).append(m.seq)
    want_ledger = {k: (min(v), max(v), len(v)) for k, v in hours.items()}
    assert {(n, b, h): (lo, hi, c) for n, b, h, lo, hi, c in d.ledger} == want_ledger
    assert len(d.ledger) == len(want_ledger) > 7
    # The receive-time messages tie: the later message of a tie must win somewhere.
    assert any(len({ts for ts, _, _ in rows}) < len(rows) for rows in by_key.values())


async def test_an_item_whose_commit_raises_is_quarantined_and_the_rest_committed(
    tmp_path: Path,
) -> None:
    """Issue 13: only store faults may pause ingest. A message nobody planned for (here a seq
    beyond SQLite's 64-bit INTEGER: sqlite3 raises OverflowError, not sqlite3.Error, while
    binding it) used to escape the writer and stop it; now the batch is redone message by
    message, the culprit is quarantined with the exception as its reason, every unit is
    acknowledged and the writer goes on."""
    w = StoreWriter(tmp_path / "roost.sqlite3", batch_max_ms=0)
    await w.open()
    acked: list[int] = []
    bad = Message("g", 1, 2**64, None, None, (("temp_c", 1.0),))
    units = [unit(0, acked), Unit([msg("g", 1, 1), bad, msg("h", 1, 0)], 1_000_000,
                                  publishes=1, on_commit=lambda: acked.append(1)), unit(2, acked)]
    async with running(w):
        for u in units:
            await w.submit(u)
        await w.drain()
        await w.submit(unit(3, acked))  # and the writer still works
        await w.drain()
    assert acked == [0, 1, 2, 3] and w.isolated == 1
    conn = sqlite3.connect(tmp_path / "roost.sqlite3")
    got = conn.execute("SELECT n.node_id, m.seq FROM messages m JOIN nodes n USING (node_ref) "
                       "ORDER BY n.node_id, m.seq").fetchall()
    assert got == [("g", 0), ("g", 1), ("g", 2), ("g", 3), ("h", 0)]
    topic, reason = conn.execute("SELECT topic, reason FROM quarantine").fetchone()
    assert topic == "roost/v1/g/readings"
    assert reason.startswith("ingest failed: OverflowError: ")


_hostile_ints = st.one_of(st.none(), st.integers(-(2**70), 2**70),
                          st.sampled_from([0, 2**31 - 1, 2**53, 2**63 - 1, 2**63, -(2**63) - 1]))
_hostile_messages = st.builds(
    Message,
    node_id=st.one_of(st.text(max_size=70), st.sampled_from(["n", "n\x00", "\ud800", ""])),
    boot=_hostile_ints,
    seq=_hostile_ints,
    t=_hostile_ints,
    uptime_ms=_hostile_ints,
    metrics=st.lists(st.tuples(st.text(max_size=20), st.floats(allow_nan=True)),
                     min_size=1, max_size=3).map(tuple),
    flags=st.integers(0, 2**16),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_hostile_messages, min_size=1, max_size=12))
def test_the_writer_never_pauses_on_what_a_message_holds(messages: list[Message]) -> None:
    """Whatever a message holds (numbers beyond 64 bits, NaN, NUL or lone surrogates in names),
    the writer commits or quarantines it and acknowledges every unit; only a store fault may
    keep a unit unacknowledged. A NaN value used to hit readings.value NOT NULL, an
    IntegrityError the writer took for a store fault and retried for ever."""

    async def run() -> tuple[list[int], int, int, int]:
        with tempfile.TemporaryDirectory() as tmp:
            w = StoreWriter(Path(tmp) / "roost.sqlite3", batch_max_ms=0)
            await w.open()
            acked: list[int] = []
            async with running(w):
                for i, m in enumerate(messages):
                    await w.submit(Unit([m, msg("ok", 1, i)], 1_000_000,
                                        on_commit=lambda i=i: acked.append(i)))
                await w.drain()
            conn = sqlite3.connect(Path(tmp) / "roost.sqlite3")
            stored = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            conn.close()
            return acked, stored, quarantined, w.commit_errors

    acked, stored, quarantined, commit_errors = asyncio.run(run())
    assert acked == list(range(len(messages)))
    assert commit_errors == 0  # nothing here is a store fault
    # every hostile message is stored or quarantined (a duplicate identity is neither: it is a
    # redelivery); every good companion message is stored
    assert stored >= len(messages) and stored + quarantined <= 2 * len(messages)

"""Committed marks (docs/mqtt.md, "End-to-end acknowledgement"): the tracker's rules as
properties, then the gateway's marks through a real mosquitto from readings committed to a real
SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker.managed import ManagedBroker
from gateway.ingest.marks import MarkTracker
from gateway.model import Flags, Message
from gateway.mqtt.client import Connection, ConnectOptions
from gateway.service import Gateway
from gateway.store.plan import Pending
from tests.conftest import InProcessGateways, wait_for
from tests.gateway.helpers import publish_all, reading


def pending(node_id: str, boot: int, seq: int, flags: int = 0) -> Pending:
    msg = Message(node_id=node_id, boot=boot, seq=seq, t=None, uptime_ms=None,
                  metrics=(("temp_c", 1.0),), flags=flags)
    return Pending(0, 0, boot, seq, 0, 0, None, flags, [], msg)


# -- the tracker -----------------------------------------------------------------------------
commits = st.lists(  # transactions, each a list of (node, boot, seq), and the time it commits
    st.tuples(
        st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3),
                           st.integers(0, 50)), max_size=8),
        st.floats(0, 3),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(commits)
def test_a_mark_never_covers_more_than_was_committed(txs: list) -> None:  # type: ignore[type-arg]
    tracker = MarkTracker(interval_s=1.0)
    history: dict[str, list[tuple[int, int]]] = {}  # per node, every committed (b, s) in order
    last_sent: dict[str, float] = {}
    now = 0.0
    for batch, dt in txs:
        now += dt
        tracker.committed([pending(n, b, s) for n, b, s in batch])
        for n, b, s in batch:
            history.setdefault(n, []).append((b, s))
        marks, later = tracker.due(now)
        assert len({m.node_id for m in marks}) == len(marks)  # coalesced: one per node
        for m in marks:
            # the model: the node's current boot is its last committed message's, and the mark
            # is the highest seq of the run of messages of that boot at the end of its history
            h = history[m.node_id]
            boot = h[-1][0]
            run = []
            for b, s in reversed(h):
                if b != boot:
                    break
                run.append(s)
            assert (m.boot, m.seq) == (boot, max(run))
            # at most one a second per node
            assert now - last_sent.get(m.node_id, -1e9) >= 1.0
            last_sent[m.node_id] = now
        if later is not None:
            assert later > now
    # given time, every node gets a mark for where it stands
    final, _ = tracker.due(now + 10)
    for m in final:
        assert tracker.current(m.node_id) == (m.boot, m.seq)
    for n in history:
        assert tracker.current(n) is not None


def test_mark_follows_the_latest_boot_and_ignores_old_and_mapped_messages() -> None:
    t = MarkTracker(interval_s=1.0)
    t.committed([pending("n", 7, 5), pending("n", 7, 9), pending("n", 7, 3)])
    assert [(m.boot, m.seq) for m in t.due(0.0)[0]] == [(7, 9)]
    t.committed([pending("n", 8, 0)])  # a reboot: seq starts again
    marks, later = t.due(0.5)
    assert marks == [] and later == 1.0  # coalesced: due one second after the last
    assert [(m.boot, m.seq) for m in t.due(1.0)[0]] == [(8, 0)]
    t.committed([pending("n", 8, 0)])  # a resend of what is covered: no news
    assert t.due(5.0) == ([], None)
    t.committed([pending("m", 0, 4, flags=int(Flags.MAPPED))])  # foreign firmware: no marks
    assert t.due(9.0) == ([], None) and t.current("m") is None


def test_online_status_makes_the_mark_due_at_once_and_a_new_connection_resends() -> None:
    t = MarkTracker(interval_s=1.0)
    t.committed([pending("n", 2, 40)])
    assert len(t.due(0.0)[0]) == 1
    t.online(["n", "never-seen"])
    assert [(m.node_id, m.seq) for m in t.due(0.1)[0]] == [("n", 40)]  # before the second
    t.resend_all()
    assert t.due(0.2) == ([], 1.1)  # due again, still coalesced
    assert [(m.node_id, m.seq) for m in t.due(1.1)[0]] == [("n", 40)]


# -- the gateway, a real broker, a real store -------------------------------------------------
async def collect(port: int, topic: str, into: list[tuple[str, dict[str, int]]],
                  ready: asyncio.Event) -> None:
    conn = await Connection.open(ConnectOptions("127.0.0.1", port, "mark-watcher",
                                                clean_start=True, session_expiry=0))
    await conn.subscribe([(topic, 0)])
    ready.set()
    try:
        while True:
            for p in await conn.messages():
                into.append((p.topic, json.loads(p.payload)))
    finally:
        await conn.close()


def node_marks(got: Iterable[tuple[str, dict[str, int]]], node: str) -> list[tuple[int, int]]:
    return [(m["b"], m["s"]) for t, m in got if t == f"roost/v1/{node}/committed"]


@pytest.mark.integration
async def test_gateway_marks_what_it_committed(gateways: InProcessGateways,
                                               broker: ManagedBroker) -> None:
    gateway: Gateway = await gateways.start(
        '[[ingest.mappings]]\nname = "t"\ntopic = "pico/{metric}/{sensor}"\n'
        'payload = "number"\nnode = "pico-{sensor}"\nmetric = "{metric}"\n'
    )
    got: list[tuple[str, dict[str, int]]] = []
    ready = asyncio.Event()
    watcher = asyncio.create_task(collect(broker.port, "roost/v1/+/committed", got, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        items = [("roost/v1/node-a/readings", reading(3, s)) for s in range(20)]
        items += [("roost/v1/node-b/readings", reading(1, s)) for s in (0, 1, 2)]
        items += [("pico/temp_c/x1", b"21.5")]  # mapped: no mark
        assert await publish_all(broker.port, "pub-a", items) == 0
        await wait_for(lambda: (3, 19) in node_marks(got, "node-a")
                       and (1, 2) in node_marks(got, "node-b"), what="marks for both nodes")
        # never more than was committed, and in order
        for node, top in (("node-a", (3, 19)), ("node-b", (1, 2))):
            seen = node_marks(got, node)
            assert seen == sorted(seen) and max(seen) == top
        assert not any("pico" in t for t, _ in got)
        # a reconnecting node (its online status committed) gets its mark at once
        before = len(node_marks(got, "node-a"))
        status = b'{"state":"online","fw":"1.2.0","board":"pico_w","boot":3}'
        assert await publish_all(broker.port, "pub-s", [("roost/v1/node-a/status", status)]) == 0
        await wait_for(lambda: len(node_marks(got, "node-a")) > before, what="mark on reconnect")
        assert node_marks(got, "node-a")[-1] == (3, 19)
        assert gateway.ingest.marks.sent >= 3
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

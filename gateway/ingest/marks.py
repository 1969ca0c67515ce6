"""Committed marks: telling each Roost v1 node what of its readings is on disk.

A node keeps every reading in its flash ring until a mark covers it (docs/mqtt.md, "End-to-end
acknowledgement"). The broker's PUBACK to the node is not enough for that: the broker
acknowledges from memory and persists later, so a power cut of the gateway can lose what the
node already deleted. A mark is sent only from what a store transaction committed, after the
commit, so it never covers a reading that could still be lost.

``MarkTracker`` is the pure part (no I/O, no clock of its own): per node the boot of the most
recently committed reading message and the highest seq committed for that boot, and when each
node may get its next mark. ``Marks`` is the glue: a store listener that feeds the tracker and
one flusher task per broker connection that publishes what is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.ingest.decode import ROOT
from gateway.model import Flags
from gateway.mqtt.client import Connection, MqttError
from gateway.store.plan import Pending
from gateway.store.writer import CommitResult

__all__ = ["Mark", "MarkTracker", "Marks", "topic"]

_MAPPED = int(Flags.MAPPED)


def topic(node_id: str) -> str:
    """The node's committed-mark topic."""
    return f"{ROOT}{node_id}/committed"


@dataclass(frozen=True, slots=True)
class Mark:
    """One mark to publish: node ``node_id`` has everything up to (``boot``, ``seq``) committed."""

    node_id: str
    boot: int
    seq: int

    def payload(self) -> bytes:
        return b'{"b":%d,"s":%d}' % (self.boot, self.seq)


@dataclass(slots=True)
class _Node:
    boot: int
    seq: int
    sent: tuple[int, int] | None = None
    sent_at: float = -1e18


class MarkTracker:
    """What each v1 node has committed, and which marks are due (coalesced per node).

    A node's mark is due when it changed and its last mark left at least ``interval_s`` ago (so
    a quiet node gets its first mark at once and a busy one about one a second), or at once when
    the node's ``online`` status was committed (its reconnect: it resends from the oldest record
    not covered, so it needs the mark now whether or not it changed).
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._nodes: dict[str, _Node] = {}
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()

    def committed(self, messages: Iterable[Pending]) -> None:
        """Take the reading messages of one commit, duplicates included, in commit order.

        A duplicate (a redelivery or a node's resend) is committed too: its identity is in the
        store. Mapped messages (foreign firmware) have no identity of the node's own: skipped.
        """
        nodes = self._nodes
        dirty = self._dirty
        for m in messages:
            if m.flags & _MAPPED:
                continue
            node_id = m.message.node_id
            st = nodes.get(node_id)
            if st is None:
                nodes[node_id] = _Node(m.boot, m.seq)
            elif st.boot != m.boot:
                st.boot, st.seq = m.boot, m.seq
            elif m.seq > st.seq:
                st.seq = m.seq
            else:
                continue
            dirty.add(node_id)

    def online(self, node_ids: Iterable[str]) -> None:
        """These nodes' ``online`` status was committed: their mark is due at once."""
        for node_id in node_ids:
            if node_id in self._nodes:
                self._urgent.add(node_id)

    def resend_all(self) -> None:
        """A new broker connection: every node's mark is due again (coalescing still applies)."""
        for st in self._nodes.values():
            st.sent = None
        self._dirty.update(self._nodes)

    def due(self, now: float) -> tuple[list[Mark], float | None]:
        """The marks to publish at ``now``, and when the next one falls due (``None``: idle)."""
        out: list[Mark] = []
        later: float | None = None
        for node_id in self._urgent:
            st = self._nodes[node_id]
            st.sent, st.sent_at = (st.boot, st.seq), now
            self._dirty.discard(node_id)
            out.append(Mark(node_id, st.boot, st.seq))
        self._urgent.clear()
        if self._dirty:
            interval = self.interval_s
            for node_id in list(self._dirty):
                st = self._nodes[node_id]
                if st.sent == (st.boot, st.seq):
                    self._dirty.discard(node_id)
                    continue
                at = st.sent_at + interval
                if at <= now:
                    st.sent, st.sent_at = (st.boot, st.seq), now
                    self._dirty.discard(node_id)
                    out.append(Mark(node_id, st.boot, st.seq))
                elif later is None or at < later:
                    later = at
        return out, later

    def current(self, node_id: str) -> tuple[int, int] | None:
        """The node's committed (boot, seq), or ``None`` if none was committed in this process."""
        st = self._nodes.get(node_id)
        return None if st is None else (st.boot, st.seq)


class Marks:
    """The tracker fed by the store writer, and the task that publishes its marks."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.tracker = MarkTracker(interval_s)
        self.sent = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def after_commit(self, result: CommitResult) -> None:
        """The store listener: runs after the transaction committed, never before."""
        self.tracker.committed(result.planned)
        online = [s.node_id for s in result.statuses if s.state == "online"]
        if online:
            self.tracker.online(online)
        self._wake.set()

    def start(self, conn: Connection) -> None:
        """Publish on ``conn`` from now on (a new connection replaces the previous one)."""
        self.stop()
        self.tracker.resend_all()
        self._task = asyncio.create_task(self._flush(conn), name="roost-marks")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _flush(self, conn: Connection) -> None:
        tracker = self.tracker
        wake = self._wake
        while not conn.closed:
            wake.clear()
            marks, later = tracker.due(time.monotonic())
            try:
                for mark in marks:
                    await conn.publish(topic(mark.node_id), mark.payload(), qos=0)
                    self.sent += 1
            except MqttError:
                return  # the next connection resends every mark (start -> resend_all)
            # Woken by the next commit, or when a coalesced mark falls due. The next start()
            # or stop() cancels this task when its connection is replaced or closed.
            timeout = None if later is None else max(0.0, later - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()

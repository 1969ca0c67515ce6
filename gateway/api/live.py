"""The live feed: the store writer's commits fanned out to WebSocket clients.

``LiveHub.publish`` is a commit listener: it runs on the event loop right after each commit, turns
the stored messages into one JSON frame per distinct client filter (encoded once, shared by every
client with that filter) and offers it to each client's bounded queue with ``put_nowait``. It never
awaits, so no client, however slow or stuck, can hold up the writer, ingest or other clients.

A client whose queue is full is slow. The policy decides (``api.ws_slow_policy``):

- ``drop``: the frame is dropped and counted; before the next frame it does get, the client is
  sent a ``gap`` frame saying how many frames and messages it missed;
- ``disconnect``: its queue is cleared and it is closed (1008), counted.

Frames carry the id range of their messages (commit order), so a client that was sent a backfill
skips the live frames the backfill already covered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from gateway.store.plan import StoredMessage
from gateway.store.writer import CommitResult

__all__ = ["Client", "Frame", "LiveHub", "message_json"]

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Frame:
    first_id: int
    last_id: int
    messages: int
    data: bytes


def message_json(m: StoredMessage, metrics: frozenset[str]) -> dict[str, Any] | None:
    """One stored message as the feed shows it; None when the metric filter leaves nothing."""
    values = {k: v for k, v in m.metrics if not metrics or k in metrics}
    if not values:
        return None
    return {
        "id": m.id,
        "node": m.node_id,
        "boot": m.boot,
        "seq": m.seq,
        "ts": m.ts,
        "received": m.received,
        "flags": m.flags,
        "metrics": values,
    }


@dataclass(eq=False, slots=True)
class Client:
    """One WebSocket client's filter, queue and drop accounting."""

    nodes: frozenset[str]
    metrics: frozenset[str]
    queue: asyncio.Queue[Frame | None]
    #: Frames and messages dropped since the client was last told.
    gap_frames: int = 0
    gap_messages: int = 0
    dropped_frames: int = 0
    kicked: bool = False

    def take_gap(self) -> tuple[int, int]:
        gap = self.gap_frames, self.gap_messages
        self.gap_frames = self.gap_messages = 0
        return gap


@dataclass(slots=True)
class LiveHub:
    """Fans commits out to clients; see the module docstring."""

    queue_size: int = 256
    policy: Literal["drop", "disconnect"] = "drop"
    clients: set[Client] = field(default_factory=set)
    connects: int = 0
    frames_queued: int = 0
    frames_dropped: int = 0
    slow_disconnects: int = 0
    closed: bool = False

    def connect(self, nodes: tuple[str, ...] = (), metrics: tuple[str, ...] = ()) -> Client:
        client = Client(frozenset(nodes), frozenset(metrics), asyncio.Queue(self.queue_size))
        if self.closed:
            client.queue.put_nowait(None)
        else:
            self.clients.add(client)
            self.connects += 1
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def publish(self, result: CommitResult) -> None:
        """The commit listener: offer the commit's messages to every client, never waiting."""
        if not self.clients:
            return  # nobody to show: the message list is never built
        committed = result.stored_messages()
        if not committed:
            return
        frames: dict[tuple[frozenset[str], frozenset[str]], Frame | None] = {}
        for client in list(self.clients):
            key = (client.nodes, client.metrics)
            if key in frames:
                frame = frames[key]
            else:
                frame = frames[key] = self._frame(committed, client.nodes, client.metrics)
            if frame is None:
                continue
            try:
                client.queue.put_nowait(frame)
                self.frames_queued += 1
            except asyncio.QueueFull:
                self._slow(client, frame)

    def _frame(
        self, committed: list[StoredMessage], nodes: frozenset[str], metrics: frozenset[str]
    ) -> Frame | None:
        data = []
        for m in committed:
            if nodes and m.node_id not in nodes:
                continue
            j = message_json(m, metrics)
            if j is not None:
                data.append(j)
        if not data:
            return None
        body = _encode({"type": "readings", "data": data})
        return Frame(data[0]["id"], data[-1]["id"], len(data), body)

    def _slow(self, client: Client, frame: Frame) -> None:
        self.frames_dropped += 1
        client.dropped_frames += 1
        if self.policy == "drop":
            client.gap_frames += 1
            client.gap_messages += frame.messages
            return
        # disconnect: make room for the end-of-feed marker; the client's task closes it.
        client.kicked = True
        self.slow_disconnects += 1
        self.clients.discard(client)
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(None)

    def close(self) -> None:
        """End every feed (shutdown): each client's task sees the end marker and closes."""
        self.closed = True
        for client in list(self.clients):
            while not client.queue.empty():
                client.queue.get_nowait()
            client.queue.put_nowait(None)
        self.clients.clear()

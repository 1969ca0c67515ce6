"""Ingest rates over the last hour, from the store writer's commits (in memory, since start)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from gateway.store.writer import CommitResult

__all__ = ["RateMeter"]


@dataclass(slots=True)
class RateMeter:
    """Stored messages and reading rows per ``step_s`` slot, for the last ``slots`` of them."""

    step_s: int = 10
    slots: int = 360
    _buckets: deque[tuple[int, int, int]] = field(default_factory=deque)  # (slot, msgs, rows)
    started: float = field(default_factory=time.time)

    def record(self, result: CommitResult, now: float | None = None) -> None:
        """The commit listener."""
        if not result.stored:
            return
        slot = int((time.time() if now is None else now) // self.step_s)
        b = self._buckets
        if b and b[-1][0] == slot:
            _, msgs, rows = b[-1]
            b[-1] = (slot, msgs + result.stored, rows + result.rows)
        else:
            b.append((slot, result.stored, result.rows))
        while b and b[0][0] <= slot - self.slots:
            b.popleft()

    def rate(self, window_s: int = 60, now: float | None = None) -> tuple[float, float]:
        """Messages/s and rows/s over the last ``window_s`` (the current slot included)."""
        now = time.time() if now is None else now
        slot = int(now // self.step_s)
        first = slot - max(1, window_s // self.step_s) + 1
        msgs = rows = 0
        for s, m, r in self._buckets:
            if s >= first:
                msgs += m
                rows += r
        span = min(now - first * self.step_s, max(now - self.started, 1e-3))
        return msgs / span, rows / span

    def history(self, now: float | None = None) -> list[tuple[int, float]]:
        """(slot start in epoch ms, messages/s) for every slot of the last hour, zeros included."""
        now = time.time() if now is None else now
        slot = int(now // self.step_s)
        counts = {s: m for s, m, _ in self._buckets}
        return [
            (s * self.step_s * 1000, counts.get(s, 0) / self.step_s)
            for s in range(slot - self.slots + 1, slot + 1)
        ]

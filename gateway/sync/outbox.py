"""Reading the outbox: stored messages after a sink's cursor, in commit order.

A read-only connection of its own (aiosqlite), so a sink draining a backlog never holds up the
store writer. ``messages.id`` is assigned in commit order and a reader only sees committed
transactions, so "every id up to the cursor was delivered" is a sound low-water mark.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite
from msgspec import Raw

from gateway.sync.sink import Outgoing

__all__ = ["Outbox"]

# SQLite assembles each message's metrics as a JSON object: that work then runs in C on the
# reader's thread, outside the GIL, and the payload embeds it as it is.
_BATCH = """
SELECT m.id, n.node_id, m.boot, m.seq, m.ts, m.received, m.flags,
       json_group_object(k.name, r.value)
FROM (SELECT id, node_ref, boot, seq, ts, received, flags FROM messages
      WHERE id > ? AND id <= ? ORDER BY id LIMIT ?) AS m
JOIN nodes n ON n.node_ref = m.node_ref
JOIN readings r ON r.message_id = m.id
JOIN metrics k ON k.metric_ref = r.metric_ref
GROUP BY m.id
ORDER BY m.id
"""

_MAX_ID = 2**62


class Outbox:
    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._db = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
        await self._db.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def batch(self, after: int, limit: int, upto: int | None = None) -> list[Outgoing]:
        """Up to ``limit`` messages with ``after < id <= upto``, in id order."""
        assert self._db is not None
        async with self._db.execute(_BATCH, (after, upto or _MAX_ID, limit)) as cur:
            rows = await cur.fetchall()
        return [Outgoing(r[0], r[1], r[2], r[3], r[4], r[5], r[6], Raw(r[7])) for r in rows]

    async def max_id(self) -> int:
        assert self._db is not None
        async with self._db.execute("SELECT coalesce(max(id), 0) FROM messages") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def backlog(self, after: int) -> tuple[int, int | None]:
        """How many messages wait after the cursor, and when the oldest of them arrived."""
        assert self._db is not None
        async with self._db.execute(
            "SELECT count(*), min(received) FROM messages WHERE id > ?", (after,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return 0, None
        return int(row[0]), (int(row[1]) if row[1] is not None else None)

"""Read-only SQLite connections on a few threads of their own.

WAL lets these read while the store writer commits. Each thread keeps one connection for its
lifetime, so a query costs one thread hop and no connection setup; the event loop never waits
on SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

__all__ = ["ReadPool"]

T = TypeVar("T")


class ReadPool:
    """Run ``fn(conn)`` on one of ``threads`` threads, each with its own read-only connection."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="roost-api-read")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the threads stopped in ``close`` (what their queries used)."""
        self._on_close.append(fn)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Closed from another thread in ``close``: allowed, as each is used by one thread.
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def job() -> T:
            return fn(self._conn())

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    def close(self) -> None:
        """Stop the threads and close their connections."""
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        for fn in self._on_close:
            fn()

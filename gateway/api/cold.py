"""Reading pruned hours back from Parquet without pyarrow in the gateway.

``ColdReader`` talks to ``python -m gateway.api.coldread`` (its docstring has the protocol): it
starts the process when a query needs cold rows, keeps it ``idle_s`` for the next page of the
same paging or export, then closes it, so pyarrow's ~83 MB live in that process only while cold
data is being read. The first query pays the start (about half a second here, measured in
docs/performance.md), the next pages do not. Queries run on ``ReadPool`` threads and take the
one reader in turn.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

__all__ = ["ColdChanged", "ColdFile", "ColdReadError", "ColdReader"]

log = logging.getLogger("roost.api.cold")


class ColdReadError(Exception):
    """The cold reader failed: the message says why."""


class ColdChanged(Exception):
    """A file changed between the catalog read and the file read (re-rolled or dropped)."""


@dataclass(frozen=True, slots=True)
class ColdFile:
    hour: int
    path: str
    bytes: int


class ColdReader:
    """One reader process at a time; counts reads, starts, errors and time for ``/api/stats``."""

    def __init__(
        self, db: Path, root: Path, *, idle_s: float = 20.0, timeout_s: float = 120.0
    ) -> None:
        self.db = db
        self.root = root
        self.idle_s = idle_s
        self.timeout_s = timeout_s
        self.reads = 0
        self.starts = 0
        self.errors = 0
        self.seconds = 0.0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._idle: threading.Timer | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._reap()
        # Kept open as long as the process runs (closed in _reap), so no context manager.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.api.coldread", str(self.db), str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.starts += 1
        return self._proc

    def _reap(self) -> None:
        """Stop the process (if any) and release its pipes. Called with the lock held."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _why(self, proc: subprocess.Popen[bytes]) -> str:
        proc.kill()
        rc = proc.wait()
        text = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace").strip()
        lines = text.splitlines()
        return lines[-1] if lines else f"the reader exited (status {rc})"

    def _idle_stop(self) -> None:
        with self._lock:
            self._reap()

    def close(self) -> None:
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            self._reap()

    def frames(self, request: dict[str, Any], files: Sequence[ColdFile]) -> Iterator[list[Any]]:
        """Rows per file, in file order. Raises ``ColdChanged`` or ``ColdReadError``."""
        body = dict(request, files=[{"hour": f.hour, "path": f.path, "bytes": f.bytes}
                                    for f in files])  # fmt: skip
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            started = time.monotonic()
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            # A stuck reader must not hold an API thread (and the reader) forever.
            watchdog = threading.Timer(self.timeout_s, proc.kill)
            watchdog.start()
            clean = False
            try:
                try:
                    proc.stdin.write(msgspec.json.encode(body) + b"\n")
                    proc.stdin.flush()
                except OSError:
                    raise self._failed(proc) from None
                while True:
                    head = proc.stdout.read(4)
                    if len(head) < 4:
                        raise self._failed(proc)
                    (n,) = struct.unpack(">I", head)
                    doc = msgspec.msgpack.decode(proc.stdout.read(n))
                    if "end" in doc:
                        clean = True
                        return
                    if "error" in doc:
                        clean = True  # the process is fine; this query is not
                        raise self._error(str(doc["error"]))
                    if "changed" in doc:
                        # Let the reader finish this answer so it can take the retry.
                        self._drain(proc)
                        clean = True
                        raise ColdChanged(doc["changed"])
                    yield doc["rows"]
            finally:
                watchdog.cancel()
                self.reads += 1
                self.seconds += time.monotonic() - started
                if not clean:
                    # Abandoned mid-answer (or failed): the pipe is out of step, start afresh.
                    self._reap()
                self._idle = threading.Timer(self.idle_s, self._idle_stop)
                self._idle.daemon = True
                self._idle.start()

    @staticmethod
    def _drain(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while len(head := proc.stdout.read(4)) == 4:
            doc = msgspec.msgpack.decode(proc.stdout.read(struct.unpack(">I", head)[0]))
            if "end" in doc or "error" in doc:
                return

    def _failed(self, proc: subprocess.Popen[bytes]) -> ColdReadError:
        return self._error(self._why(proc))

    def _error(self, why: str) -> ColdReadError:
        self.errors += 1
        self.last_error = why
        log.error("cold reader: %s", why)
        return ColdReadError(f"reading Parquet failed: {why}")

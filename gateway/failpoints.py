"""Fault injection for the tests of what no handler can catch (the poison-message breaker).

Off unless ``ROOST_FAILPOINT_KILL_ON`` is set in the environment when the gateway starts: then a
message whose payload contains those bytes makes the process SIGKILL itself while ingest handles
it, as a segfault or the OOM killer would. Read once at import; when unset the hot path costs
one ``is None`` test per message.
"""

from __future__ import annotations

import os
import signal

__all__ = ["KILL_ON", "maybe_die"]

_raw = os.environ.get("ROOST_FAILPOINT_KILL_ON")
KILL_ON: bytes | None = _raw.encode() if _raw else None


def maybe_die(payload: bytes) -> None:
    """Die by SIGKILL if the failpoint is set and ``payload`` contains its bytes."""
    if KILL_ON is not None and KILL_ON in payload:
        os.kill(os.getpid(), signal.SIGKILL)

"""systemd's notify protocol: READY, WATCHDOG and STOPPING, with no dependency.

Does nothing unless systemd set ``NOTIFY_SOCKET`` (``Type=notify`` units); the watchdog interval
comes from ``WATCHDOG_USEC`` (``WatchdogSec=``).
"""

from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["notify", "watchdog_interval", "watchdog_loop"]


def notify(state: str) -> bool:
    """Send one notification such as ``READY=1``; ``False`` when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for, in seconds, or ``None``."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000


async def watchdog_loop() -> None:
    """Ping the watchdog while the event loop runs; a stalled loop stops the pings."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)

"""Under systemd (Type=notify, WatchdogSec): READY, WATCHDOG and STOPPING reach the socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.broker.managed import ManagedBroker

pytestmark = pytest.mark.integration


async def test_notify_ready_watchdog_stopping(broker: ManagedBroker, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--mqtt-url", broker.url, "--data-dir",
         str(tmp_path / "data")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(20):
            while got.count("WATCHDOG=1") < 3:
                got.append((await loop.sock_recv(sock, 256)).decode())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            while "STOPPING=1" not in got:
                got.append((await loop.sock_recv(sock, 256)).decode())
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert got[0] == "READY=1"
    assert got.index("STOPPING=1") > got.index("WATCHDOG=1")

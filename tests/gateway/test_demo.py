"""`roost demo` as a person runs it: virtual nodes reach the store; Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.gateway.helpers import count

pytestmark = pytest.mark.integration


def _micropythons(under: Path) -> set[int]:
    """MicroPython processes running in a directory below ``under`` (this demo's nodes)."""
    out = subprocess.run(["pgrep", "-f", "micropython"], capture_output=True, text=True).stdout
    mine = set()
    for pid in out.split():
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(under)):
                mine.add(int(pid))
        except OSError:
            continue
    return mine


async def test_demo_runs_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--nodes", "3", "--interval", "1",
         "--outage-every", "0", "--data-dir", str(data), "--mqtt-port", str(free_port()),
         "--http-port", str(free_port()), "--http-host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    try:
        await wait_for(lambda: count(data, "SELECT count(*) FROM nodes WHERE state='online'") == 3,
                       timeout=60, what="3 nodes online")
        await wait_for(lambda: count(data, "SELECT count(*) FROM messages") >= 9, timeout=60)
        assert len(_micropythons(data)) == 3
        # The nodes got the gateway's time: their later readings carry their own timestamps.
        await wait_for(lambda: count(data, "SELECT count(*) FROM messages WHERE flags = 0") > 0,
                       timeout=30, what="timed readings")
        assert count(data, "SELECT count(DISTINCT boot) FROM messages") == 1
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "Roost demo running" in text and "Ctrl-C to stop" in text
    assert not _micropythons(data), "virtual nodes outlived the demo"
    assert not (data / "broker" / "broker.json").exists()  # the managed broker stopped too
    await asyncio.sleep(0)

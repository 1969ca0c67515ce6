"""The roost command line on a real store: stats, nodes, errors that say what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.model import Message, NodeStatus
from gateway.store.writer import StoreWriter, Unit


def roost(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=cwd, check=False, env={"PATH": "/usr/bin:/bin"})


async def test_stats_and_nodes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    w = StoreWriter(data / "roost.sqlite3")
    await w.open()
    items = [Message("alpha", 1, s, 1_763_812_345_000 + s, None, (("temp_c", 20.0),))
             for s in (0, 1, 3)]
    items += [Message("alpha", 1, 0, None, None, (("temp_c", 1.0),)),
              NodeStatus("alpha", "online", fw="1.0.0", board="pico_w", boot=1, rssi=-60)]
    await w._commit_with_retry([Unit(items, 1_763_812_400_000)])
    await w.close()

    r = roost("stats", "--data-dir", str(data), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["messages"], s["stored"], s["duplicates"], s["rows"], s["nodes"], s["seq_gaps"]) == (
        4, 3, 1, 3, 1, 1)
    r = roost("stats", "--data-dir", str(data), cwd=tmp_path)
    assert "lost readings (seq gaps)" in r.stdout
    r = roost("nodes", "--data-dir", str(data), cwd=tmp_path)
    assert r.returncode == 0
    line = r.stdout.strip()
    assert line.startswith("alpha") and "online" in line and "pico_w" in line
    assert "messages 3 lost 1" in line
    (node,) = json.loads(roost("nodes", "--data-dir", str(data), "--json", cwd=tmp_path).stdout)
    assert node["fw"] == "1.0.0" and node["rssi"] == -60


def test_stats_without_a_store_says_what_to_do(tmp_path: Path) -> None:
    r = roost("stats", "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert r.returncode == 1
    assert "no Roost store" in r.stderr and "roost run" in r.stderr


def test_run_without_mosquitto_says_how_to_install(tmp_path: Path) -> None:
    # Hide every mosquitto the lookup could find, as on a machine without the package.
    r = subprocess.run([sys.executable, "-c",
                        "import gateway.broker.managed as m, os;"
                        "m.os.access = lambda *a: False; m.shutil.which = lambda *a: None;"
                        "from gateway.cli import main; main()", "run", "--data-dir",
                        str(tmp_path / "d")], capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert "apt-get install mosquitto" in r.stderr and "--mqtt-url" in r.stderr

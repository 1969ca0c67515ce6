"""The HIL scenarios, in the order a bench runs them. Each acts on every board of the fleet
(actions first, then the waits, so several boards cost little more than one). The same code runs
on real boards (--hil-port) and on virtual ones; tests that need host powers skip on real ones."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tests.hil.rig import REPO, Bench, Board, until

pytestmark = pytest.mark.integration


def boot_of(b: Board) -> int:
    return int(b.status()["boot"])


def clean_reboot(fleet: list[Board]) -> None:
    """A deliberate reboot: it clears the boot-loop guard, which counts every boot shorter than
    30 s as a crash (this suite resets boards far more often than that)."""
    boots = {b.node_id: boot_of(b) for b in fleet}
    for b in fleet:
        assert b.console("reboot")["ok"]
    for b in fleet:
        b.close()
        until(lambda b=b: b.status()["boot"] == boots[b.node_id] + 1, 30, f"{b.node_id} reboot")
        assert b.status()["safe"] is False


def test_flash_blank_board_boots_and_births(flashed: dict[str, Any], boards: list[Board],
                                            bench: Bench) -> None:
    """`roost flash` (real mpremote) writes .mpy firmware and config; the node is born."""
    for b in boards:
        run = flashed[b.node_id]["run"]
        assert run.returncode == 0, run.stderr
        assert "is online" in run.stderr, run.stderr  # the CLI saw the birth at the broker
        node = until(lambda b=b: bench.node(b.node_id).get("state") == "online"
                     and bench.node(b.node_id), 20, f"{b.node_id} online at the gateway")
        assert node["board"] == b.kind and node["fw"]
        ls = subprocess.run([sys.executable, "-m", "mpremote", "connect", b.port, "resume",
                             "fs", "ls", ":lib/roost"], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
        assert ls.returncode == 0, ls.stderr
        assert "node.mpy" in ls.stdout or "node.py" in ls.stdout
        # mpremote interrupted the firmware: a hard reset starts it again
        subprocess.run([sys.executable, "-m", "mpremote", "connect", b.port, "resume", "reset"],
                       capture_output=True, timeout=60, cwd=REPO, check=True)
        b.reopen()
    clean_reboot(boards)


def test_console_protocol_answers(fleet: list[Board]) -> None:
    for b in fleet:
        s = b.status()
        assert s["ok"] and s["node_id"] == b.node_id and s["board"] == b.kind
        assert set(b.console("help")["commands"].split()) >= {"status", "inject", "sample", "wifi"}
        bad = b.console("nosuch")
        assert bad["ok"] is False and bad["error"]
        assert b.console("inject temp_c")["ok"] is False  # missing value: refused, not crashed
        assert b.console("sample")["ok"] is True


def test_readings_arrive_with_identity(fleet: list[Board], bench: Bench) -> None:
    for b in fleet:
        s = b.status()
        boot, seq = s["boot"], s["seq"]
        got = bench.wait_seqs(b.node_id, boot, {seq, seq + 1, seq + 2}, 30)
        assert {seq, seq + 1, seq + 2} <= got
        assert {"temp_c", "rh_pct", "chip_temp_c"} <= bench.metrics(b.node_id, boot, seq)
        node = bench.node(b.node_id)
        assert node["boot"] == boot and node["board"] == b.kind


def test_injected_values_arrive_exactly(fleet: list[Board], bench: Bench) -> None:
    sent = []
    for i, b in enumerate(fleet):
        value = 23.456 + i
        assert b.console(f"inject temp_c {value}")["ok"]
        seq = b.console("sample")["seq"]
        sent.append((b, boot_of(b), seq, value))
    for b, boot, seq, value in sent:
        until(lambda b=b, boot=boot, seq=seq: bench.value(b.node_id, boot, seq, "temp_c")
              is not None, 20, f"{b.node_id} seq {seq}")
        assert bench.value(b.node_id, boot, seq, "temp_c") == value


def _outage_then_replay(fleet: list[Board], bench: Bench, down: Any, up: Any) -> None:
    marks = []
    for b in fleet:
        s = b.status()
        marks.append((b, s["boot"], s["seq"]))
    down()
    for b in fleet:
        until(lambda b=b: b.status()["mqtt"] is False, 30, f"{b.node_id} to notice the outage")
    for b in fleet:
        for _ in range(3):
            assert b.console("sample")["ok"]
    for b in fleet:
        assert b.status()["ring"] >= 3  # buffered in flash, not sent
    up()
    for b, boot, first in marks:
        last = b.status()["seq"] - 1
        want = set(range(first, last + 1))
        got = bench.wait_seqs(b.node_id, boot, want, 45)
        assert want <= got, f"{b.node_id} lost {sorted(want - got)}"
        until(lambda b=b: b.status()["ring"] <= 1, 20, f"{b.node_id} ring drained")


def test_wifi_outage_buffers_and_replays(fleet: list[Board], bench: Bench) -> None:
    """The firmware's own simulated outage (console), so it runs on real boards too."""
    _outage_then_replay(
        fleet, bench,
        lambda: [b.console("wifi down") for b in fleet],
        lambda: [b.console("wifi up") for b in fleet],
    )


def test_broker_outage_buffers_and_replays(fleet: list[Board], bench: Bench) -> None:
    _outage_then_replay(fleet, bench, bench.broker_down, bench.broker_up)


def test_power_cycle_mid_outage_keeps_flash_buffer(fleet: list[Board], bench: Bench) -> None:
    powers = [b.powers() for b in fleet]
    before = []
    for p in powers:
        p.wifi(False)  # the access point goes away
    for b in fleet:
        until(lambda b=b: b.status()["mqtt"] is False, 30, f"{b.node_id} offline")
        s = b.status()
        for _ in range(3):
            b.console("sample")
        before.append((b, s["boot"], s["seq"], b.status()["seq"] - 1))
    for p in powers:
        p.power_cycle()
    for b, boot, first, last in before:
        b.reopen()
        s = b.status(timeout=20)
        assert s["boot"] == boot + 1 and s["ring"] >= last - first + 1
    for p in powers:
        p.wifi(True)
    for b, boot, first, last in before:
        want = set(range(first, last + 1))
        got = bench.wait_seqs(b.node_id, boot, want, 45)
        assert want <= got, f"{b.node_id} lost {sorted(want - got)} across the power cycle"
    clean_reboot(fleet)


def test_watchdog_reset_recovers(fleet: list[Board], bench: Bench) -> None:
    boots = {b.node_id: boot_of(b) for b in fleet}
    mark = bench.sub.mark()
    for b in fleet:
        assert b.console("hang")["ok"]  # blocks the event loop: only the watchdog can help
    for b in fleet:
        b.close()
        births = until(lambda b=b: bench.sub.births(b.node_id, mark), 30, f"{b.node_id} reborn")
        assert births[-1]["boot"] == boots[b.node_id] + 1
        if b.virtual is not None:
            assert any(e["ev"] == "wdt_expired" for e in b.virtual.events())
        s = b.status(timeout=20)
        assert s["safe"] is False
        bench.wait_seqs(b.node_id, s["boot"], {s["seq"]}, 20)  # sampling again
    clean_reboot(fleet)


def test_commands_round_trip(fleet: list[Board], bench: Bench) -> None:
    tag = str(time.monotonic_ns())
    for b in fleet:
        bench.command(b.node_id, {"id": f"i{tag}", "op": "identify", "s": 1})
        bench.command(b.node_id, {"id": f"s{tag}", "op": "set", "interval_s": 2})
    for b in fleet:
        assert bench.ack(b.node_id, f"i{tag}")["ok"] is True
        assert bench.ack(b.node_id, f"s{tag}")["ok"] is True
        assert b.status()["interval_s"] == 2
        if b.virtual is not None:
            assert until(lambda b=b: [e for e in b.virtual.events() if e["ev"] == "pin"], 10,
                         "the LED to blink")
    boots = {b.node_id: boot_of(b) for b in fleet}
    mark = bench.sub.mark()
    for b in fleet:
        bench.command(b.node_id, {"id": f"b{tag}", "op": "set", "interval_s": 1})
        bench.command(b.node_id, {"id": f"r{tag}", "op": "reboot"})
    for b in fleet:
        assert bench.ack(b.node_id, f"r{tag}")["ok"] is True
        births = until(lambda b=b: bench.sub.births(b.node_id, mark), 30, f"{b.node_id} reboot")
        assert births[-1]["boot"] == boots[b.node_id] + 1 and births[-1]["interval_s"] == 1
        b.reopen()


def test_boot_loop_guard_enters_safe_mode(fleet: list[Board], bench: Bench) -> None:
    for b in fleet:
        assert b.status()["safe"] is False
    for _ in range(3):  # safe_after = 3 crashes in a row
        boots = {b.node_id: boot_of(b) for b in fleet}
        for b in fleet:
            assert b.console("crash")["ok"]
        for b in fleet:
            b.close()
            until(lambda b=b, n=boots[b.node_id]: b.status()["boot"] == n + 1, 30, "crash reboot")
    mark = bench.sub.mark()
    for b in fleet:
        s = b.status()
        assert s["safe"] is True
    for b in fleet:
        until(lambda b=b: bench.node(b.node_id).get("state") == "safe_mode", 20, "safe_mode")
        # a deliberate reboot clears the guard: the node comes back in normal mode
        assert b.console("reboot")["ok"]
    for b in fleet:
        b.close()
        births = until(lambda b=b: [x for x in bench.sub.births(b.node_id, mark)
                                    if x["state"] == "online"], 30, f"{b.node_id} normal again")
        assert births
        assert b.status(timeout=20)["safe"] is False

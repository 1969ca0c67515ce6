"""The virtual board itself: a blank board at its REPL, mpremote's operations, host powers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from gateway.virtual.board import VirtualBoard
from tests.hil.rig import REPO, until

pytestmark = pytest.mark.integration


def mp(board: VirtualBoard, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", board.port, *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_blank_board_boots_to_the_repl(vboard: VirtualBoard, tmp_path: Path) -> None:
    with serial.Serial(str(tmp_path / "ttyVB0"), timeout=0.5) as s:  # through the stable link
        s.write(b"\r\n1+2\r\n")
        out = b""
        deadline = time.monotonic() + 5
        while b"3\r\n" not in out.replace(b"\n", b"\r\n").replace(b"\r\r", b"\r") \
                and time.monotonic() < deadline:
            out += s.read(256)
        assert b">>> " in out and b"1+2" in out and b"3" in out
        s.write(b"\x04")  # Ctrl-D at the friendly REPL: a soft reset
        deadline = time.monotonic() + 5
        out = b""
        while b"MicroPython v" not in out and time.monotonic() < deadline:
            out += s.read(256)
        assert b"MPY: soft reboot" in out and b"MicroPython v" in out


def test_mpremote_cp_exec_ls_resume_reset(vboard: VirtualBoard, tmp_path: Path) -> None:
    src = tmp_path / "hello.py"
    src.write_text("X = 41\n" + "# padding\n" * 200)
    assert mp(vboard, "fs", "cp", str(src), ":hello.py").returncode == 0
    assert (vboard.fs / "hello.py").read_text() == src.read_text()
    ls = mp(vboard, "fs", "ls", ":")
    assert f"{src.stat().st_size} hello.py" in ls.stdout
    run = mp(vboard, "exec", "import hello; print(hello.X + 1)")
    assert run.stdout.strip() == "42"
    assert mp(vboard, "exec", "Y = 7").returncode == 0
    assert mp(vboard, "resume", "exec", "print(Y)").stdout.strip() == "7"  # no soft reset
    gone = mp(vboard, "exec", "print(Y)")  # a plain exec soft-resets first
    assert "NameError" in gone.stdout + gone.stderr
    assert mp(vboard, "reset").returncode == 0
    until(lambda: any(e["ev"] == "boot" and e["cause"] == "machine_reset"
                      for e in vboard.events()), 10, "the boot after machine.reset()")
    # a Pico W resets through its watchdog: WDT_RESET (the port table, from ports/rp2)
    want = vboard.port_spec.cause_after["machine_reset"]
    assert want == vboard.port_spec.reset_causes["WDT_RESET"]
    assert mp(vboard, "exec", "import machine; print(machine.reset_cause())").stdout.strip() \
        == str(want)


def test_nothing_outside_the_board_is_reachable(vboard: VirtualBoard) -> None:
    run = mp(vboard, "exec", "print(open('../../../../etc/hostname').read())")
    assert "ENOENT" in run.stdout + run.stderr


def test_flash_full_is_a_host_power(vboard: VirtualBoard, tmp_path: Path) -> None:
    src = tmp_path / "f.txt"
    src.write_text("data")
    vboard.flash_full()
    run = mp(vboard, "fs", "cp", str(src), ":f.txt")
    assert run.returncode != 0 and "No space" in run.stdout + run.stderr
    vboard.flash_full(False)
    assert mp(vboard, "fs", "cp", str(src), ":f.txt").returncode == 0


def test_ctrl_c_interrupts_a_running_main(vboard: VirtualBoard) -> None:
    (vboard.fs / "main.py").write_text("import time\nwhile True:\n    time.sleep_ms(50)\n")
    vboard.power_cycle()
    assert mp(vboard, "exec", "print('in control')").stdout.strip() == "in control"
    assert [e["cause"] for e in vboard.events() if e["ev"] == "boot"][-2] == "pwron"

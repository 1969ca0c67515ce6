"""`roost flash` refuses clearly: a wrong port, something that is not MicroPython, an old one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import tty

import pytest

from gateway.flash import BoardInfo, FlashError, TooOld, check_board, compiler_for, node_config
from tests.hil.rig import REPO


def flash_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "flash", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def test_wrong_port_is_refused() -> None:
    run = flash_cli("--board", "pico_w", "--port", "/dev/ttyNOPE9", "--node-id", "n1", "--no-wait")
    assert run.returncode == 1 and "no such serial port" in run.stderr


def test_a_device_that_is_not_micropython_is_refused() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def chatter() -> None:  # a GPS-like device: talks, but no REPL
        while not stop.is_set():
            os.write(master, b"$GPGGA,123519,4807.038,N*47\r\n")
            time.sleep(0.1)
            os.set_blocking(master, False)
            with contextlib.suppress(BlockingIOError):
                os.read(master, 4096)

    t = threading.Thread(target=chatter, daemon=True)
    t.start()
    try:
        run = flash_cli("--board", "esp32", "--port", os.ttyname(slave), "--node-id", "n1",
                        "--no-wait")
    finally:
        stop.set()
        t.join(2)
        os.close(master)
        os.close(slave)
    assert run.returncode == 1 and "no MicroPython REPL answered" in run.stderr


def info(version: tuple[int, int, int], mpy: int | None, name: str = "micropython",
         machine: str = "Raspberry Pi Pico W with RP2040") -> BoardInfo:
    return BoardInfo(name, version, mpy, machine, 150_000)


def test_old_or_other_pythons_are_refused() -> None:
    with pytest.raises(TooOld, match=r"older than 1\.22\.0"):
        check_board(info((1, 19, 1), 6), "pico_w")
    with pytest.raises(TooOld, match="circuitpython"):
        check_board(info((9, 0, 0), None, name="circuitpython"), "pico_w")
    with pytest.raises(FlashError, match="--board esp32"):
        check_board(info((1, 24, 0), 6 | 3 << 8), "esp32")
    check_board(info((1, 24, 0), 6 | 3 << 8), "pico_w")


def test_precompiled_only_for_a_matching_bytecode() -> None:
    assert compiler_for(info((1, 24, 0), 6 | 3 << 8 | 5 << 10)) == []  # armv6m, mpy 6.3
    assert compiler_for(info((1, 20, 0), 6 | 1 << 8)) == ["-b", "6.1"]
    assert compiler_for(info((1, 22, 0), None)) is None  # says nothing: copy source


def test_config_is_checked_before_flashing() -> None:
    cfg = node_config("n-1", wifi_ssid="w", wifi_password="p", gateway="gw", mqtt_port=1884,
                      test_mode=True, interval_s=5, extra={"wdt_ms": 4000})
    assert cfg == {"node_id": "n-1", "wifi": {"ssid": "w", "password": "p"},
                   "gateway": {"host": "gw", "port": 1884}, "test_mode": True, "interval_s": 5,
                   "wdt_ms": 4000}
    with pytest.raises(FlashError, match="unknown to the firmware"):
        node_config("n1", extra={"intervall_s": 3})
    with pytest.raises(FlashError, match="--node-id"):
        node_config("bad/id")

"""Conformance of the host fakes (firmware/host) and the virtual board with the MicroPython ports
they stand for. Each expectation names its source (MicroPython v1.24.0 unless said otherwise);
the numbers the port table holds are checked against those sources here, and the fakes against
the port table, so neither can drift kinder than a real board."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.virtual import find_micropython, firmware_dir
from gateway.virtual.board import VirtualBoard
from gateway.virtual.ports import PORTS, port_for

FW = firmware_dir()
REPO = FW.parent


def run_fake(chip: str, code: str, tmp: Path, control: dict[str, Any] | None = None) -> str:
    """Run ``code`` in the unix port with the fakes of ``chip`` first on the path."""
    (tmp / "control.json").write_text(json.dumps(control or {}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROPY", "ROOST_"))}
    env.update(
        MICROPYPATH=os.pathsep.join([str(FW / "host"), ".frozen"]),
        ROOST_PORT=PORTS[chip].to_json(),
        ROOST_CONTROL=str(tmp / "control.json"),
        ROOST_EVENTS=str(tmp / "events.jsonl"),
    )
    res = subprocess.run([find_micropython(), "-c", textwrap.dedent(code)], env=env, cwd=tmp,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def outcome(expr: str) -> str:
    """A snippet printing ``ok`` or the exception's type and text."""
    return (
        "try:\n"
        f"    {expr}\n"
        "    print('ok')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e.args[0] if e.args else '')\n"
    )


# -- the port table against the sources it cites ------------------------------------------------
def test_port_table_holds_the_ports_numbers() -> None:
    rp2, esp, s3 = PORTS["rp2040"], PORTS["esp32"], PORTS["esp32s3"]
    # ports/rp2/machine_wdt.c: WDT_TIMEOUT_MAX 8388 on RP2040; esp32 has no upper bound
    assert rp2.wdt_max_ms == 8388 and esp.wdt_max_ms is None
    # ports/rp2/modmachine.c: RP2_RESET_PWRON 1, RP2_RESET_WDT 3 and nothing else
    assert rp2.reset_causes == {"PWRON_RESET": 1, "WDT_RESET": 3}
    # machine.reset() is watchdog_reboot(): reset_cause() says WDT_RESET (micropython#19409)
    assert rp2.cause_after["machine_reset"] == 3 and rp2.cause_after["soft"] is None
    # ports/esp32/modmachine.c: PWRON 1 .. SOFT 5; ESP_RST_SW -> HARD_RESET; is_soft_reset
    assert list(esp.reset_causes.values()) == [1, 2, 3, 4, 5]
    assert esp.cause_after["machine_reset"] == 2 and esp.cause_after["soft"] == 5
    # ports/esp32/modesp32.c: raw_temperature only with CONFIG_IDF_TARGET_ESP32
    assert esp.temperature == "raw_temperature" and s3.temperature == "mcu_temperature"
    assert port_for("pico_w") is rp2 and port_for("esp32") is esp
    with pytest.raises(ValueError, match="not a esp32 chip"):
        port_for("esp32", "rp2040")


# -- dht (micropython-lib micropython/drivers/sensor/dht/dht.py, drivers/dht/dht.c) ------------
DHT = """
import dht, machine, time
d = dht.DHT22(machine.Pin(15))
"""


def test_dht_checksum_error_is_a_plain_exception(tmp_path: Path) -> None:
    code = DHT + "try:\n    d.measure()\nexcept Exception as e:\n" \
        "    print(type(e).__name__, e, isinstance(e, OSError))\n"
    out = run_fake("rp2040", code, tmp_path, {"dht": "checksum"})
    assert out == "Exception checksum error False"


def test_dht_no_answer_is_etimedout(tmp_path: Path) -> None:
    out = run_fake("rp2040", DHT + outcome("d.measure()"), tmp_path, {"dht": "fail"})
    assert out == "OSError 110"


def test_dht22_refuses_a_second_measurement_within_2_s(tmp_path: Path) -> None:
    code = DHT + "d.measure()\n" + outcome("d.measure()") + "time.sleep_ms(2050)\n" + outcome(
        "d.measure()")
    assert run_fake("rp2040", code, tmp_path).splitlines() == ["OSError 110", "ok"]


def test_dht22_decodes_its_frame_like_the_driver(tmp_path: Path) -> None:
    code = DHT + "d.measure()\nprint(round(d.temperature(), 1), round(d.humidity(), 1), " \
        "(sum(d.buf[:4]) & 255) == d.buf[4])\n"
    t, h, ok = run_fake("rp2040", code, tmp_path, {"temp_c": -12.3, "rh_pct": 80}).split()
    assert -13.5 < float(t) < -11 and 78 < float(h) < 82 and ok == "True"


# -- WDT (ports/rp2/machine_wdt.c, ports/esp32/machine_wdt.c) -------------------------------------
def test_wdt_range_per_port(tmp_path: Path) -> None:
    code = "import machine\n" + "".join(
        outcome(f"machine.WDT(timeout={t})") for t in (8388, 8389, 0)
    ) + outcome("machine.WDT(1, 3000)")
    assert run_fake("rp2040", code, tmp_path).splitlines() == [
        "ok", "ValueError timeout exceeds 8388", "ValueError WDT timeout too short",
        "ValueError WDT(1) doesn't exist",
    ]
    assert run_fake("esp32", code, tmp_path).splitlines()[:3] == [
        "ok", "ok", "ValueError WDT timeout too short",
    ]


# -- reset causes (ports/rp2/modmachine.c, ports/esp32/modmachine.c) -----------------------------
@pytest.mark.parametrize("chip", ["rp2040", "esp32"])
def test_reset_constants_per_port(chip: str, tmp_path: Path) -> None:
    names = ["PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET"]
    code = "import machine\nprint(" + ", ".join(
        f"getattr(machine, {n!r}, None)" for n in names) + ")\n"
    got = dict(zip(names, run_fake(chip, code, tmp_path).split(), strict=True))
    want = PORTS[chip].reset_causes
    assert {k: int(v) for k, v in got.items() if v != "None"} == want


# -- Pin and I2C (ports/*/machine_pin.c, ports/*/machine_i2c.c) -------------------------------
def test_i2c_pins_per_port(tmp_path: Path) -> None:
    code = "from machine import I2C, Pin\n" + "".join(outcome(x) for x in (
        "I2C(0, sda=Pin(4), scl=Pin(5))",
        "I2C(0, sda=Pin(5), scl=Pin(4))",
        "I2C(0, sda=Pin(6), scl=Pin(7))",
        "I2C(1, sda=Pin(6), scl=Pin(7))",
        "I2C(2)",
        "Pin(30)",
    ))
    assert run_fake("rp2040", code, tmp_path).splitlines() == [
        "ok", "ValueError bad SCL pin", "ValueError bad SCL pin", "ok",
        "ValueError I2C(2) doesn't exist", "ValueError invalid pin",
    ]
    # the ESP32's GPIO matrix routes I2C to any pin; GPIO 30 does not exist, 34+ only read
    assert run_fake("esp32", code + outcome("Pin(34, Pin.OUT)"), tmp_path).splitlines() == [
        "ok", "ok", "ok", "ok", "ValueError I2C(2) doesn't exist", "ValueError invalid pin",
        "ValueError pin can only be input",
    ]


# -- esp32 chip temperature (ports/esp32/modesp32.c) -----------------------------------------
def test_esp32_classic_has_raw_temperature_only_and_s3_mcu_temperature_only(
    tmp_path: Path,
) -> None:
    code = "import esp32\nprint(hasattr(esp32, 'raw_temperature'), " \
        "hasattr(esp32, 'mcu_temperature'))\n"
    assert run_fake("esp32", code, tmp_path) == "True False"
    assert run_fake("esp32s3", code, tmp_path) == "False True"


def test_the_esp32_board_file_reads_both_chips(tmp_path: Path) -> None:
    code = f"import sys\nsys.path.insert(0, {str(FW / 'esp32')!r})\nimport board\n" \
        "print(round(board.chip_temp_c()))\n"
    for chip in ("esp32", "esp32s3"):
        assert 40 <= int(run_fake(chip, code, tmp_path, {"chip_temp_c": 45.0})) <= 50, chip


# -- name resolution (extmod/modlwip.c, ports/esp32/modsocket.c) -------------------------------
def test_dns_delay_and_failure(tmp_path: Path) -> None:
    code = "import socket, time\nt = time.ticks_ms()\nsocket.getaddrinfo('localhost', 1883)\n" \
        "print(time.ticks_diff(time.ticks_ms(), t) >= 300)\n" + outcome(
            "socket.getaddrinfo('roost.local', 1883)")
    control = {"dns_delay_ms": 300, "dns_hosts": {"roost.local": "127.0.0.1"}}
    out = run_fake("rp2040", code, tmp_path, control).splitlines()
    assert out == ["True", "ok"]
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["host"] for e in events if e["ev"] == "dns"] == ["localhost", "roost.local"]
    assert run_fake("rp2040", outcome("__import__('socket').getaddrinfo('x', 1)"), tmp_path,
                    {"dns": "fail"}) == "OSError -2"
    assert run_fake("esp32", outcome("__import__('socket').getaddrinfo('x', 1)"), tmp_path,
                    {"dns": "fail"}) == "OSError -202"


# -- the virtual board: watchdog across soft reset, reset causes, a full filesystem -----------
def mp(board: VirtualBoard, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", board.port, *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.integration
@pytest.mark.parametrize("board", ["pico_w", "esp32"])
def test_watchdog_survives_soft_reset(board: str, tmp_path: Path) -> None:
    """Neither port stops its watchdog on Ctrl-C or a soft reset: an armed board resets."""
    with VirtualBoard(tmp_path / "b", board=board) as vb:
        assert mp(vb, "exec", "import machine; machine.WDT(timeout=1500)").returncode == 0
        # mpremote soft-resets before each command: boot 2 armed the watchdog, boot 3 is the
        # next command's soft reset, and nobody feeds the watchdog any more
        mp(vb, "exec", "print(1)")
        vb.wait_boot(4, timeout=15)
        boots = [e for e in vb.events() if e["ev"] == "boot"]
        assert [e["cause"] for e in boots[:4]] == ["pwron", "soft", "soft", "wdt"], boots
        want = vb.port_spec.cause_after["wdt"]
        out = mp(vb, "exec", "import machine; print(machine.reset_cause())").stdout.strip()
        # after the soft reset mpremote itself did, esp32 says SOFT_RESET, rp2 still WDT_RESET
        after_soft = vb.port_spec.cause_after["soft"]
        assert out == str(want if after_soft is None else after_soft)


@pytest.mark.integration
def test_filesystem_full_is_enospc(tmp_path: Path) -> None:
    with VirtualBoard(tmp_path / "b", flash_kb=16) as vb:
        code = outcome("open('big', 'wb').write(bytes(20000))")
        out = mp(vb, "exec", code).stdout.strip()
        assert out == "OSError 28", out
        assert mp(vb, "exec", outcome("open('small', 'wb').write(bytes(100))")).stdout.strip() \
            == "ok"


@pytest.mark.integration
def test_two_open_files_cannot_both_take_the_last_blocks(tmp_path: Path) -> None:
    """The free space is the filesystem's, not each file's: two files written at once share it,
    as littlefs's block allocator does."""
    with VirtualBoard(tmp_path / "b", flash_kb=64) as vb:
        free = mp(vb, "exec", "import os; s = os.statvfs('/'); print(s[0] * s[3])").stdout
        n = int(free.strip()) // 2 + 4096  # each alone would fit, both together do not
        code = ("a = open('a', 'wb'); b = open('b', 'wb')\n"
                + outcome(f"a.write(bytes({n})); b.write(bytes({n}))"))
        assert mp(vb, "exec", code).stdout.strip() == "OSError 28"

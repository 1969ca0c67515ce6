"""What each MicroPython port does where the firmware depends on it: the port table.

One entry per chip, read from MicroPython v1.24.0's sources (the same in 1.23-1.25 for everything
here) and micropython-lib. The host fakes in ``firmware/host/`` get their chip's entry as JSON in
``$ROOST_PORT`` from the virtual node and board supervisors, and the HIL suite takes its
expectations (reset causes, limits) from here, so a fake and the checks of a real board cannot
disagree. Where a real board behaves worse than this table, the table is wrong.

Sources, per field:

- ``wdt_max_ms``: ports/rp2/machine_wdt.c (``WDT_TIMEOUT_MAX`` 8388 on RP2040, ``ValueError
  "timeout exceeds 8388"``); ports/esp32/machine_wdt.c has no upper bound and refuses
  ``timeout <= 0`` with ``ValueError "WDT timeout too short"``. On both ports the watchdog is not
  stopped by Ctrl-C or a soft reset (neither main.c deinitialises it; rp2 cannot stop it at all).
- ``reset_causes`` and ``cause_after``: ports/rp2/modmachine.c defines only ``PWRON_RESET`` (1)
  and ``WDT_RESET`` (3) and answers 3 whenever the watchdog hardware reset the chip, which
  includes ``machine.reset()`` (it resets through ``watchdog_reboot``; micropython issue 19409);
  a soft reset does not change the answer (it reads the hardware register). ports/esp32/
  modmachine.c: 1-5, ``machine.reset()`` (ESP_RST_SW) and a panic give ``HARD_RESET``, a task
  watchdog ``WDT_RESET``, and after a soft reset ``SOFT_RESET``.
- ``i2c``: ports/rp2/machine_i2c.c (``I2C(n) doesn't exist`` for n > 1; SDA on even and SCL on
  odd GPIOs whose bit 1 is the bus number, else ``ValueError "bad SDA pin"``/``"bad SCL pin"``);
  ports/esp32/machine_i2c.c routes any GPIO (the GPIO matrix), buses 0 and 1.
- ``pins``/``input_only``: ports/rp2/machine_pin.c (GPIO 0-29 and the named "LED" of the Pico W,
  else ``ValueError "invalid pin"``); ports/esp32/machine_pin.h (the GPIOs that exist per chip)
  and machine_pin.c (``"pin can only be input"`` from GPIO 34 on the classic ESP32).
- ``temperature``: ports/esp32/modesp32.c has ``esp32.raw_temperature()`` (raw, Fahrenheit-ish)
  only on the classic ESP32 and ``esp32.mcu_temperature()`` (Celsius) only on the others; the
  RP2040's sensor is ADC channel 4.
- ``dns``: ports/esp32/modsocket.c releases the GIL around ``getaddrinfo`` (so a ``_thread`` can
  resolve while the main thread runs) and asks mDNS first for ``*.local`` names; extmod/modlwip.c
  (rp2) polls lwIP until the answer or its timeout, holding everything else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BOARD_CHIPS", "PORTS", "Port", "port_for"]


@dataclass(frozen=True, slots=True)
class Port:
    """One chip's behaviour as its MicroPython port implements it (see the module docstring)."""

    chip: str
    port: str
    machine: str
    wdt_max_ms: int | None
    reset_causes: dict[str, int]
    cause_after: dict[str, int | None]  # event -> reset_cause() after it; None: unchanged
    i2c_buses: int
    i2c_rule: str  # "rp2" (even SDA / odd SCL per bus) or "any"
    pins: tuple[int, ...]
    named_pins: tuple[str, ...] = ()
    input_only: tuple[int, ...] = ()
    temperature: str = "adc4"  # "adc4" | "raw_temperature" | "mcu_temperature"
    thread_dns: bool = False  # getaddrinfo may run in a _thread without holding the others
    flash_kb: int = 848
    source: str = "MicroPython v1.24.0"
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """The entry as the host fakes read it from ``$ROOST_PORT``."""
        return json.dumps(asdict(self), separators=(",", ":"))


_RP2_CAUSES = {"PWRON_RESET": 1, "WDT_RESET": 3}
_ESP32_CAUSES = {
    "PWRON_RESET": 1, "HARD_RESET": 2, "WDT_RESET": 3, "DEEPSLEEP_RESET": 4, "SOFT_RESET": 5,
}

# what the classic ESP32 and the S3 share: one port (ports/esp32), one modmachine.c
_ESP32_COMMON: dict[str, Any] = {
    "port": "esp32",
    "wdt_max_ms": None,
    "reset_causes": _ESP32_CAUSES,
    "cause_after": {"pwron": 1, "hard": 2, "machine_reset": 2, "wdt": 3, "soft": 5},
    "i2c_buses": 2,
    "i2c_rule": "any",
    "thread_dns": True,
    "flash_kb": 1984,
}

PORTS: dict[str, Port] = {
    "rp2040": Port(
        chip="rp2040",
        port="rp2",
        machine="Raspberry Pi Pico W with RP2040",
        wdt_max_ms=8388,
        reset_causes=_RP2_CAUSES,
        # the RUN pin and a crash of the interpreter (the supervisor's "hard") report PWRON
        cause_after={"pwron": 1, "hard": 1, "machine_reset": 3, "wdt": 3, "soft": None},
        i2c_buses=2,
        i2c_rule="rp2",
        pins=tuple(range(30)),
        named_pins=("LED",),
        temperature="adc4",
        thread_dns=False,  # _thread runs on core 1; lwIP belongs to core 0
        flash_kb=848,
    ),
    "esp32": Port(
        chip="esp32",
        machine="Generic ESP32 module with ESP32",
        pins=(*range(24), 25, 26, 27, *range(32, 40)),
        input_only=tuple(range(34, 40)),
        temperature="raw_temperature",
        **_ESP32_COMMON,
    ),
    "esp32s3": Port(
        chip="esp32s3",
        machine="Generic ESP32S3 module with ESP32S3",
        pins=(*range(22), *range(26, 49)),
        temperature="mcu_temperature",
        **_ESP32_COMMON,
    ),
}

BOARD_CHIPS: dict[str, tuple[str, ...]] = {"pico_w": ("rp2040",), "esp32": ("esp32", "esp32s3")}
"""The chips each firmware board folder runs on; the first is the default."""


def port_for(board: str, chip: str | None = None) -> Port:
    """The port table entry of a board kind (``pico_w``, ``esp32``) and optional chip."""
    chips = BOARD_CHIPS.get(board)
    if chips is None:
        raise ValueError(f"board: {board!r} is not one of {', '.join(BOARD_CHIPS)}")
    chip = chip or chips[0]
    if chip not in chips:
        raise ValueError(f"chip: {chip!r} is not a {board} chip (use {', '.join(chips)})")
    return PORTS[chip]

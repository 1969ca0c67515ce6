# Host fake of `machine` for the MicroPython unix port: Pin, ADC, I2C (with an emulated BME280),
# WDT, unique_id, reset and reset_cause, steered by _hostctl. It follows the port named by the
# chip's port table entry ($ROOST_PORT, gateway/virtual/ports.py, MicroPython v1.24.0):
#   - WDT: ports/rp2/machine_wdt.c (id 0 only; ValueError "timeout exceeds 8388" on RP2040) and
#     ports/esp32/machine_wdt.c (ValueError "WDT timeout too short" for timeout <= 0). It lives
#     in the supervisor (the ROOST_WDT_FILE heartbeat), so like the hardware it outlives Ctrl-C
#     and a soft reset; only a hard reset or power cycle stops it.
#   - reset constants and reset_cause(): ports/rp2/modmachine.c (PWRON_RESET, WDT_RESET only)
#     and ports/esp32/modmachine.c (all five); the supervisor computes the cause per port.
#   - Pin: ports/rp2/machine_pin.c / ports/esp32/machine_pin.c ("invalid pin", "pin can only be
#     input"); I2C: ports/rp2/machine_i2c.c ("I2C(n) doesn't exist", "bad SCL pin", "bad SDA
#     pin") and ports/esp32/machine_i2c.c (any GPIO).
# reset() ends the process; the supervisor (gateway/virtual) restarts it and passes the next
# reset cause in ROOST_RESET_CAUSE.
import os
import sys
import time

import _hostctl
from umachine import *  # noqa: F403 - keep the unix port's own members (mem32, idle, ...)

_PORT = _hostctl.port()
for _name, _value in _PORT["reset_causes"].items():
    globals()[_name] = _value  # only the constants this port defines

EXIT_RESET = 42  # exit status that tells the supervisor "machine.reset() was called"


def unique_id():
    h = os.getenv("ROOST_UNIQUE_ID") or "e6614103e7452d2f"
    return bytes(int(h[i : i + 2], 16) for i in range(0, len(h), 2))


def reset_cause():
    return int(os.getenv("ROOST_RESET_CAUSE") or _PORT["reset_causes"]["PWRON_RESET"])


def reset():
    _hostctl.event("reset")
    sys.stdout.flush() if hasattr(sys.stdout, "flush") else None
    sys.exit(EXIT_RESET)


def soft_reset():
    # as on both ports: SystemExit, which the REPL (pyexec) turns into a soft reset
    raise SystemExit


def freq(*args):
    return 125000000


def idle():
    time.sleep_ms(1)


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 4
    IRQ_FALLING = 8

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if isinstance(id, Pin):
            id = id.id
        if id not in _PORT["pins"] and id not in _PORT["named_pins"]:
            raise ValueError("invalid pin")
        self.id = id
        self.mode = -1
        self._v = 0
        self.init(mode, pull, value)

    def value(self, v=None):
        if v is None:
            if self.mode == Pin.OUT:
                return self._v
            return int(_hostctl.get("pins", {}).get(str(self.id), 0))
        v = 1 if v else 0
        if v != self._v:
            _hostctl.event("pin", pin=str(self.id), v=v)
        self._v = v
        return None

    __call__ = value

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            if mode in (Pin.OUT, Pin.OPEN_DRAIN) and self.id in _PORT["input_only"]:
                raise ValueError("pin can only be input")
            self.mode = mode
        if value is not None:
            self.value(value)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(not self._v)

    def irq(self, handler=None, trigger=0):
        return None


class ADC:
    def __init__(self, ch):
        self.ch = ch.id if isinstance(ch, Pin) else ch

    def read_u16(self):
        if self.ch == 4:  # RP2040 temperature sensor: 0.706 V at 27 C, -1.721 mV/C
            t = _hostctl.walk("chip", _hostctl.get("chip_temp_c", 30.0), 0.3, -20, 90)
            return int((0.706 - (t - 27) * 0.001721) / 3.3 * 65535)
        return int(_hostctl.walk("adc%s" % self.ch, 30000, 500, 0, 65535))


class WDT:
    """Writes its timeout to ROOST_WDT_FILE on every feed; the supervisor kills the process
    when the file is older than the timeout (as the hardware would reset the chip)."""

    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError("WDT(%d) doesn't exist" % id)
        top = _PORT["wdt_max_ms"]
        if top is not None and timeout > top:
            raise ValueError("timeout exceeds %d" % top)
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        self.timeout = timeout
        _hostctl.event("wdt_start", timeout_ms=timeout)
        self.feed()

    def feed(self):
        path = os.getenv("ROOST_WDT_FILE")
        if path:
            with open(path, "w") as f:
                f.write(str(self.timeout))


class _BME280:
    # Calibration words from the Bosch datasheet's worked example (T and P) and a typical part
    # (H); raw values wander around figures that compensate to about 21 C, 1006 hPa, 45 %.
    CAL = bytes(
        [
            0x70,
            0x6B,
            0x43,
            0x67,
            0x18,
            0xFC,
            0x7D,
            0x8E,
            0x43,
            0xD6,
            0xD0,
            0x0B,
            0x27,
            0x0B,
            0x8C,
            0x00,
            0xF9,
            0xFF,
            0x8C,
            0x3C,
            0xF8,
            0xC6,
            0x70,
            0x17,
        ]
    )
    CAL_H1 = 75
    CAL_H = bytes([0x6A, 0x01, 0x00, 0x13, 0x2A, 0x03, 0x1E])

    def __init__(self):
        self.regs = {}

    def read(self, reg, n):
        if reg == 0xD0:
            return b"\x60"[:n]
        if reg == 0x88:
            return self.CAL[:n]
        if reg == 0xA1:
            return bytes([self.CAL_H1])
        if reg == 0xE1:
            return self.CAL_H[:n]
        if reg == 0xF7:
            t = int(_hostctl.walk("bme_t", 506930, 60, 480000, 540000))
            p = int(_hostctl.walk("bme_p", 415148, 40, 380000, 450000))
            h = int(_hostctl.walk("bme_h", 28000, 40, 20000, 36000))
            return bytes(
                [
                    p >> 12,
                    (p >> 4) & 0xFF,
                    (p & 0xF) << 4,
                    t >> 12,
                    (t >> 4) & 0xFF,
                    (t & 0xF) << 4,
                    h >> 8,
                    h & 0xFF,
                ]
            )[:n]
        return bytes(n)

    def write(self, reg, data):
        self.regs[reg] = bytes(data)


_bme = _BME280()


class I2C:
    def __init__(self, id=0, scl=None, sda=None, freq=400000):
        if not 0 <= id < _PORT["i2c_buses"]:
            raise ValueError("I2C(%d) doesn't exist" % id)
        if _PORT["i2c_rule"] == "rp2":
            # SDA on even, SCL on odd GPIOs; bit 1 of the GPIO number is the bus
            for pin, odd, what in ((scl, 1, "SCL"), (sda, 0, "SDA")):
                if pin is None:
                    continue
                n = pin.id if isinstance(pin, Pin) else pin
                if not isinstance(n, int) or n & 1 != odd or (n & 2) >> 1 != id:
                    raise ValueError("bad %s pin" % what)
        self.id = id

    def _dev(self, addr):
        state = _hostctl.get("i2c", "ok")
        if state == "absent" or addr != 0x76:
            raise OSError(19)  # ENODEV, as a real bus reports a missing device
        if state == "fail":
            raise OSError(5)  # EIO
        return _bme

    def scan(self):
        return [] if _hostctl.get("i2c", "ok") == "absent" else [0x76]

    def readfrom_mem(self, addr, reg, n):
        return self._dev(addr).read(reg, n)

    def writeto_mem(self, addr, reg, data):
        self._dev(addr).write(reg, data)

# Sensor drivers behind one tiny interface:
#   read() -> {metric: number}; it may raise anything a driver raises (micropython-lib's dht
#   raises a plain Exception("checksum error"), the ports' I2C OSError or ValueError), which the
#   node counts per sensor;
#   event sensors also have changed() -> bool, polled often, so a change is published at once.
# Metric names are snake_case with a unit suffix. Drivers get pins and chip specifics from the
# board module passed in by main.py.
import time

import machine


class DHT22:
    """The DHT22 needs 2 s between measurements (datasheet: collecting period); asked sooner it
    does not answer. Within that window read() gives the last good measurement again (as
    Adafruit's driver does), or nothing when there is none."""

    event = False
    PERIOD_MS = 2000

    def __init__(self, pin):
        import dht

        self._d = dht.DHT22(machine.Pin(pin))
        self._at = None
        self._last = {}

    def read(self):
        now = time.ticks_ms()
        if self._at is not None and time.ticks_diff(now, self._at) < self.PERIOD_MS:
            return self._last
        self._at = now
        self._last = {}
        d = self._d
        d.measure()
        self._last = {"temp_c": round(d.temperature(), 1), "rh_pct": round(d.humidity(), 1)}
        return self._last


class ChipTemp:
    event = False

    def __init__(self, fn):
        self._fn = fn

    def read(self):
        return {"chip_temp_c": round(self._fn(), 1)}


class PIR:
    """Motion sensor on a digital pin: a reading on every change, the state in every sample."""

    event = True

    def __init__(self, pin):
        self._pin = machine.Pin(pin, machine.Pin.IN)
        self._last = self._pin.value()

    def changed(self):
        v = self._pin.value()
        if v != self._last:
            self._last = v
            return True
        return False

    def read(self):
        self._last = self._pin.value()
        return {"motion": self._last}


def make(spec, board):
    """Build one driver from a config entry such as {"type": "dht22", "pin": 15}."""
    kind = spec.get("type")
    if kind == "dht22":
        return DHT22(spec.get("pin", board.DHT_PIN))
    if kind == "chip_temp":
        return ChipTemp(board.chip_temp_c)
    if kind == "pir":
        return PIR(spec.get("pin", getattr(board, "PIR_PIN", None)))
    if kind == "bme280":
        from roost.bme280 import BME280

        i2c_id, sda, scl = getattr(board, "I2C", (0, None, None))
        i2c = machine.I2C(
            spec.get("i2c", i2c_id),
            sda=machine.Pin(spec.get("sda", sda)),
            scl=machine.Pin(spec.get("scl", scl)),
        )
        return BME280(i2c, spec.get("addr", 0x76))
    raise ValueError("config sensors: unknown type %r" % kind)

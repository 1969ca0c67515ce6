# Sensor drivers behind one tiny interface:
#   read() -> {metric: number}, raising OSError when the sensor does not answer;
#   event sensors also have changed() -> bool, polled often, so a change is published at once.
# Metric names are snake_case with a unit suffix. Drivers get pins and chip specifics from the
# board module passed in by main.py.
import machine


class DHT22:
    event = False

    def __init__(self, pin):
        import dht

        self._d = dht.DHT22(machine.Pin(pin))

    def read(self):
        d = self._d
        d.measure()
        return {"temp_c": round(d.temperature(), 1), "rh_pct": round(d.humidity(), 1)}


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

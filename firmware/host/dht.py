# Host fake of `dht`: DHT22 values walk around the control file's temp_c / rh_pct at the
# sensor's 0.1 resolution; {"dht": "fail"} times out like an unplugged sensor, "hang" blocks.
import _hostctl


class DHTBase:
    def __init__(self, pin):
        self.pin = pin
        self._t = 0.0
        self._h = 0.0

    def measure(self):
        mode = _hostctl.get("dht", "ok")
        if mode == "fail":
            raise OSError(110)  # ETIMEDOUT, what the real driver raises
        if mode == "hang":
            _hostctl.hang()
        self._t = round(_hostctl.walk("dht_t", _hostctl.get("temp_c", 21.0), 0.1, -40, 80), 1)
        self._h = round(_hostctl.walk("dht_h", _hostctl.get("rh_pct", 45.0), 0.3, 0, 100), 1)

    def temperature(self):
        return self._t

    def humidity(self):
        return self._h


class DHT22(DHTBase):
    pass


class DHT11(DHTBase):
    pass

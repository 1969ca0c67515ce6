# Host fake of `dht`, following micropython-lib's driver (micropython/drivers/sensor/dht/dht.py,
# v0.1.0, frozen into the rp2 and esp32 ports of MicroPython 1.23-1.25 by their
# boards/manifest.py) over the C reader drivers/dht/dht.c (dht_readinto):
#   - measure() fills a 5-byte buffer; temperature() and humidity() decode that buffer, so after a
#     failed measure() they return whatever the buffer holds (the previous or a corrupt frame);
#   - no answer from the sensor: OSError(ETIMEDOUT) from dht_readinto;
#   - a frame whose checksum does not match: a plain Exception("checksum error") (not OSError);
#   - the DHT22 needs 2 s between measurements (datasheet "collecting period"; DHT11: 1 s).
#     Read sooner, a real sensor does not answer or sends a garbled frame: the fake raises
#     OSError(ETIMEDOUT), the worse of the two.
# Values walk around the control file's temp_c / rh_pct at the sensor's 0.1 resolution;
# {"dht": "fail"} times out like an unplugged sensor, "checksum" sends bad frames, "hang" blocks.
import time

import _hostctl

ETIMEDOUT = 110


class DHTBase:
    MIN_PERIOD_MS = 2000

    def __init__(self, pin):
        self.pin = pin
        self.buf = bytearray(5)
        self._last = None

    def _frame(self):
        raise NotImplementedError

    def measure(self):
        buf = self.buf
        now = time.ticks_ms()
        early = self._last is not None and time.ticks_diff(now, self._last) < self.MIN_PERIOD_MS
        if not early:
            self._last = now  # a start signal sent too early is ignored by the sensor
        mode = _hostctl.get("dht", "ok")
        if mode == "hang":
            _hostctl.hang()
        if mode == "fail" or early:
            raise OSError(ETIMEDOUT)  # dht_readinto: no (complete) answer on the pin
        self._frame()
        if mode == "checksum":
            buf[4] = (buf[4] + 1) & 0xFF  # a flipped bit on the wire
        if (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF != buf[4]:
            raise Exception("checksum error")

    def _walk(self):
        t = _hostctl.walk("dht_t", _hostctl.get("temp_c", 21.0), 0.1, -40, 80)
        h = _hostctl.walk("dht_h", _hostctl.get("rh_pct", 45.0), 0.3, 0, 100)
        return t, h

    def _sum(self):
        b = self.buf
        b[4] = (b[0] + b[1] + b[2] + b[3]) & 0xFF


class DHT11(DHTBase):
    MIN_PERIOD_MS = 1000

    def _frame(self):
        t, h = self._walk()
        b = self.buf
        b[0] = int(h)
        b[1] = 0
        b[2] = max(int(t), 0)
        b[3] = 0
        self._sum()

    def humidity(self):
        return self.buf[0]

    def temperature(self):
        return self.buf[2]


class DHT22(DHTBase):
    def _frame(self):
        t, h = self._walk()
        b = self.buf
        hv = round(h * 10)
        tv = round(abs(t) * 10)
        b[0] = hv >> 8
        b[1] = hv & 0xFF
        b[2] = (tv >> 8) | (0x80 if t < 0 else 0)
        b[3] = tv & 0xFF
        self._sum()

    def humidity(self):
        return (self.buf[0] << 8 | self.buf[1]) * 0.1

    def temperature(self):
        t = ((self.buf[2] & 0x7F) << 8 | self.buf[3]) * 0.1
        if self.buf[2] & 0x80:
            t = -t
        return t

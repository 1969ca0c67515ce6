# Bosch BME280 (temperature, humidity, pressure) over I2C, written from the datasheet's
# floating-point compensation formulas. The chip runs in normal mode (x1 oversampling, 1 s
# standby), so read() only fetches the latest result and never waits.
import struct

_CHIP_ID = 0x60


class BME280:
    event = False

    def __init__(self, i2c, addr=0x76):
        self._i2c = i2c
        self._addr = addr
        if self._rd(0xD0, 1)[0] != _CHIP_ID:
            raise OSError("no BME280 at 0x%02x" % addr)
        c = self._rd(0x88, 24)
        self._t = struct.unpack("<Hhh", c[:6])
        self._p = struct.unpack("<Hhhhhhhhh", c[6:24])
        h1 = self._rd(0xA1, 1)[0]
        e = self._rd(0xE1, 7)
        h4 = (e[3] << 4) | (e[4] & 0x0F)
        h5 = (e[5] << 4) | (e[4] >> 4)
        self._h = (
            h1,
            struct.unpack("<h", e[0:2])[0],
            e[2],
            h4 - 4096 if h4 > 2047 else h4,
            h5 - 4096 if h5 > 2047 else h5,
            e[6] - 256 if e[6] > 127 else e[6],
        )
        i2c.writeto_mem(addr, 0xF2, b"\x01")  # humidity x1 (takes effect with ctrl_meas)
        i2c.writeto_mem(addr, 0xF5, b"\xa0")  # standby 1000 ms, filter off
        i2c.writeto_mem(addr, 0xF4, b"\x27")  # temp x1, pressure x1, normal mode

    def _rd(self, reg, n):
        return self._i2c.readfrom_mem(self._addr, reg, n)

    def compensate(self, adc_t, adc_p, adc_h):
        """Raw ADC values -> (temp_c, pressure_pa, rh_pct), datasheet section 8.1."""
        t1, t2, t3 = self._t
        v1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
        v2 = adc_t / 131072.0 - t1 / 8192.0
        fine = v1 + v2 * v2 * t3
        temp = fine / 5120.0
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self._p
        v1 = fine / 2.0 - 64000.0
        v2 = v1 * v1 * p6 / 32768.0 + v1 * p5 * 2.0
        v2 = v2 / 4.0 + p4 * 65536.0
        v1 = (p3 * v1 * v1 / 524288.0 + p2 * v1) / 524288.0
        v1 = (1.0 + v1 / 32768.0) * p1
        if v1 == 0:
            raise OSError("BME280 calibration")
        p = ((1048576.0 - adc_p) - v2 / 4096.0) * 6250.0 / v1
        p += (p9 * p * p / 2147483648.0 + p * p8 / 32768.0 + p7) / 16.0
        h1, h2, h3, h4, h5, h6 = self._h
        h = fine - 76800.0
        h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * h)) * (
            h2 / 65536.0 * (1.0 + h6 / 67108864.0 * h * (1.0 + h3 / 67108864.0 * h))
        )
        h = h * (1.0 - h1 * h / 524288.0)
        return temp, p, min(max(h, 0.0), 100.0)

    def read(self):
        d = self._rd(0xF7, 8)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        t, p, h = self.compensate(adc_t, adc_p, adc_h)
        return {"temp_c": round(t, 1), "pressure_hpa": round(p / 100.0, 1), "rh_pct": round(h, 1)}

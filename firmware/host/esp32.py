# Host fake of the `esp32` module: the chip temperature only, as ports/esp32/modesp32.c
# (MicroPython v1.24.0) offers it per chip: raw_temperature() (a raw reading, about Fahrenheit)
# only on the classic ESP32, mcu_temperature() (Celsius, int) only on the S2/S3/C3 and later.
import _hostctl


def _celsius():
    return _hostctl.walk("chip", _hostctl.get("chip_temp_c", 45.0), 0.5, -20, 120)


if _hostctl.port()["temperature"] == "raw_temperature":

    def raw_temperature():
        return int(_celsius() * 1.8 + 32)

else:

    def mcu_temperature():
        return int(_celsius() + 0.5)

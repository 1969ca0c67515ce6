# Host fake of the `esp32` module: the chip temperature only.
import _hostctl


def mcu_temperature():
    return int(_hostctl.walk("chip", _hostctl.get("chip_temp_c", 45.0), 0.5, -20, 120))


def raw_temperature():
    return int(mcu_temperature() * 1.8 + 32)

# Config merging and errors, the boot counter and crash guard, BME280 compensation, the clock.
import json
import os

from roost import config
from roost.bme280 import BME280
from roost.state import State
from roost.util import Clock


def write(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj) if not isinstance(obj, str) else obj)


def test_config_defaults_and_merge():
    write("cfg1.json", {"wifi": {"ssid": "net"}, "interval_s": 5, "ring": {"capacity": 10}})
    c = config.load("cfg1.json")
    assert c["wifi"] == {"ssid": "net", "password": ""}
    assert c["interval_s"] == 5 and c["ring"]["capacity"] == 10 and c["ring"]["segment"] == 64
    assert c["gateway"]["port"] == 1883 and c["test_mode"] is False
    assert config.load("missing.json")["interval_s"] == 10


def test_config_errors_name_the_key():
    for bad, key in (
        ({"interval_s": "ten"}, "interval_s"),
        ({"colour": 1}, "colour"),
        ({"ring": {"policy": "keep"}}, "ring.policy"),
        ("{nope", "JSON"),
    ):
        write("cfg2.json", bad)
        try:
            config.load("cfg2.json")
            raise AssertionError(bad)
        except config.ConfigError as e:
            assert key in str(e), (key, str(e))


def test_boot_counter_and_crash_guard():
    try:
        os.remove("st1.json")
    except OSError:
        pass
    s = State("st1.json")
    assert s.start_boot() == 1 and s.crashes() == 0
    s = State("st1.json")  # the previous boot never became healthy: a crash
    assert s.start_boot() == 2 and s.crashes() == 1
    s.mark_healthy()
    s = State("st1.json")
    assert s.start_boot() == 3 and s.crashes() == 0
    s.set("interval_s", 7)
    assert State("st1.json").get("interval_s") == 7


class FakeI2C:
    # the BMP280/BME280 datasheet's worked example calibration
    def readfrom_mem(self, addr, reg, n):
        if reg == 0xD0:
            return b"\x60"
        if reg == 0x88:
            import struct

            return struct.pack(
                "<HhhHhhhhhhhh",
                27504,
                26435,
                -1000,
                36477,
                -10685,
                3024,
                2855,
                140,
                -7,
                15500,
                -14600,
                6000,
            )
        if reg == 0xA1:
            return b"\x4b"
        return bytes(n)

    def writeto_mem(self, addr, reg, data):
        pass


def test_bme280_datasheet_example():
    s = BME280(FakeI2C())
    t, p, h = s.compensate(519888, 415148, 0)
    assert abs(t - 25.08) < 0.01, t
    assert abs(p - 100653.27) < 1.0, p
    assert 0.0 <= h <= 100.0


def test_clock_offsets_uptime():
    c = Clock()
    assert c.epoch_ms() is None and not c.synced()
    c.set_epoch_ms(1763812345123)
    up = c.uptime_ms()
    assert c.synced() and abs(c.epoch_ms(up) - 1763812345123) < 50
    assert c.epoch_ms(up + 1000) - c.epoch_ms(up) == 1000

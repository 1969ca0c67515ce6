# ESP32 DevKit: pins and chip specifics only.
import esp32

NAME = "esp32"
DHT_PIN = 4  # GPIO4
LED = 2  # GPIO2, the on-board LED
I2C = (0, 21, 22)  # SDA GPIO21, SCL GPIO22, for a BME280
PIR_PIN = 27
SENSORS = [{"type": "dht22"}, {"type": "chip_temp"}]


def chip_temp_c():
    # newer chips (S2/S3/C3) report Celsius; the classic ESP32 only a raw Fahrenheit figure
    if hasattr(esp32, "mcu_temperature"):
        return esp32.mcu_temperature()
    return (esp32.raw_temperature() - 32) / 1.8

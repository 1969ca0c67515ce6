# Raspberry Pi Pico W: pins and chip specifics only.
import machine

NAME = "pico_w"
DHT_PIN = 15  # GP15
LED = "LED"  # the CYW43's LED
I2C = (0, 4, 5)  # I2C0 on GP4 (SDA) / GP5 (SCL), for a BME280
PIR_PIN = 16  # GP16
SENSORS = [{"type": "dht22"}, {"type": "chip_temp"}]

_adc = None


def chip_temp_c():
    # RP2040 datasheet 4.9.5: the sensor on ADC4 reads 0.706 V at 27 C, -1.721 mV per degree
    global _adc
    if _adc is None:
        _adc = machine.ADC(4)
    volts = _adc.read_u16() * 3.3 / 65535
    return 27 - (volts - 0.706) / 0.001721

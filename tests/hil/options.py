"""Command-line options of the HIL suite (registered from tests/conftest.py)."""

from __future__ import annotations

import pytest


def add_options(parser: pytest.Parser) -> None:
    g = parser.getgroup("hil", "hardware-in-the-loop rig (tests/hil)")
    g.addoption("--hil-port", default="",
                help="real boards: serial port(s), comma-separated (default: virtual boards)")
    g.addoption("--hil-board", choices=("pico_w", "esp32"), default="pico_w",
                help="the kind of the real boards on --hil-port")
    g.addoption("--hil-gateway-host", default="",
                help="real boards: this machine's address as the boards reach it over Wi-Fi")
    g.addoption("--hil-wifi-ssid", default="", help="real boards: Wi-Fi network to join")
    g.addoption("--hil-wifi-password", default="", help="real boards: its password")
    g.addoption("--hil-virtual", default="pico_w,esp32",
                help="virtual boards to spawn when no --hil-port is given (comma-separated kinds)")
    g.addoption("--hil-report", default="",
                help="folder for hil-summary.txt and hil-junit.xml (default: pytest's temp dir)")

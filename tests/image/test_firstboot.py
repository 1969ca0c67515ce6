"""The first-boot parser and what it writes, on a directory standing in for the Pi's root."""

from __future__ import annotations

import configparser
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.firstboot import (
    FirstbootError,
    Paths,
    WifiSection,
    dump_toml,
    hotspot_keyfile,
    parse,
    run,
    wifi_keyfile,
)
from gateway.nodeauth import GATEWAY_USER, NodeAuthError, add_node, has_user

BOOT = Path(__file__).resolve().parent / "boot"


def keyfile(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def test_parse_valid_file() -> None:
    cfg = parse((BOOT / "roost-valid.toml").read_text())
    assert cfg.name == "roost-test"
    assert cfg.wifi is not None and cfg.wifi.country == "DE"  # upper-cased
    assert cfg.hotspot is not None and cfg.hotspot.channel == 6
    assert cfg.settings["gateway"]["data_dir"] == "/var/lib/roost"
    assert cfg.settings["http"]["port"] == 80
    assert cfg.settings["api"]["admin_token"] == "test-admin-token-123"
    assert "wifi" not in cfg.settings and "hotspot" not in cfg.settings


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[gateway\nname='x'", "not valid TOML"),
        ("[gateway]\nname = 'has space'", "gateway.name"),
        ("[gateway]\nnmae = 'x'", "nmae"),
        ("[wifi]\nssid = 'x'\npassword = 'short'", "wifi.password"),
        ("[wifi]\npassword = 'long enough'", "ssid"),
        ("[wifi]\nssid = '" + "x" * 33 + "'", "wifi.ssid"),
        ("[wifi]\nssid = 'x'\ncountry = 'Germany'", "wifi.country"),
        ("[hotspot]\nchannel = 13", "hotspot"),
        ("[hotspot]\npasword = 'x'", "pasword"),
        ("[mqtt]\nurl = 'mqtt://elsewhere'", "mqtt.url"),
        ("[[sinks]]\nname = 'a'\ntype = 'mqtt'\nurl = 'http://x'", "sinks[0].url"),
    ],
)
def test_parse_rejects_with_a_message_naming_the_setting(text: str, needle: str) -> None:
    with pytest.raises(FirstbootError) as exc:
        parse(text)
    assert needle in str(exc.value)


def test_dump_toml_round_trips_settings_with_tables_and_arrays() -> None:
    data = {
        "gateway": {"name": "g", "data_dir": "/var/lib/roost"},
        "api": {"admin_token": 'quote " backslash \\ tab \t ünïcode 🐔 del \x7f'},
        "ingest": {
            "max_pending": 100,
            "mappings": [{"name": "t", "topic": "tele/{node_id}/SENSOR", "payload": "json",
                          "rename": {"am2301_temperature": "temp_c", "odd key": "x"}}],
        },
        "store": {"batch_max_ms": 2.5, "synchronous": "full"},
        "rollup": {"enabled": False},
        "sinks": [{"name": "a", "type": "mqtt", "url": "mqtt://h"},
                  {"name": "k", "type": "kafka", "bootstrap": "h:9092"}],
    }
    text = dump_toml(data)
    assert tomllib.loads(text) == data


def test_wifi_keyfile_escapes_and_parses() -> None:
    text = wifi_keyfile(WifiSection(ssid=" lead\\ing", password="pa;ss#word=1", country="DE"))
    cp = keyfile(text)
    assert cp["connection"]["id"] == "roost-wifi"
    assert cp["wifi"]["ssid"] == "\\slead\\\\ing"  # GLib escapes: \s leading blank, \\ backslash
    assert cp["wifi-security"]["psk"] == "pa;ss#word=1"
    open_net = keyfile(wifi_keyfile(WifiSection(ssid="open")))
    assert "wifi-security" not in open_net


def test_hotspot_keyfile_is_a_shared_ap_on_a_fixed_channel() -> None:
    cp = keyfile(hotspot_keyfile("roost", "12345678", 6))
    assert cp["wifi"]["mode"] == "ap" and cp["wifi"]["channel"] == "6"
    assert cp["wifi"]["band"] == "bg"
    assert cp["ipv4"]["method"] == "shared"
    assert cp["connection"]["autoconnect"] == "false"


def _root(tmp_path: Path) -> tuple[Paths, Path]:
    root = tmp_path / "root"
    (root / "boot/firmware").mkdir(parents=True)
    (root / "etc/roost").mkdir(parents=True)
    (root / "etc/roost/roost.toml").write_text('[gateway]\ndata_dir = "/var/lib/roost"\n')
    return Paths(root), root / "boot/firmware/roost.toml"


def test_run_applies_a_valid_file_and_moves_it(tmp_path: Path) -> None:
    paths, boot_file = _root(tmp_path)
    shutil.copy(BOOT / "roost-valid.toml", boot_file)
    report = run(paths, boot_file)
    assert report.error is None
    assert not boot_file.exists()
    archived = list(paths("/etc/roost/firstboot").glob("*.applied"))
    assert len(archived) == 1 and archived[0].stat().st_mode & 0o777 == 0o600
    settings, _ = load_settings(paths("/etc/roost/roost.toml"), env={})
    assert settings.gateway.name == "roost-test"
    assert settings.api.admin_token == "test-admin-token-123"
    assert [s.name for s in settings.sinks] == ["cloud"]
    assert paths("/etc/hostname").read_text() == "roost-test\n"
    assert "127.0.1.1\troost-test" in paths("/etc/hosts").read_text()
    wifi = paths("/etc/NetworkManager/system-connections/roost-wifi.nmconnection")
    assert wifi.stat().st_mode & 0o777 == 0o600
    assert keyfile(wifi.read_text())["wifi-security"]["psk"] == "correct horse; battery"
    hotspot = keyfile(
        paths("/etc/NetworkManager/system-connections/roost-hotspot.nmconnection").read_text())
    assert hotspot["wifi"]["ssid"] == "roost-test"
    assert hotspot["wifi-security"]["psk"] == "hotspot-pass-123"
    info = json.loads(paths("/var/lib/roost/hotspot.json").read_text())
    assert info["password"] == "hotspot-pass-123"
    assert "ieee80211_regdom=DE" in paths("/etc/modprobe.d/roost-wifi-country.conf").read_text()
    env = paths("/etc/roost/gateway.env")
    assert env.stat().st_mode & 0o777 == 0o600
    assert f"ROOST_MQTT_URL=mqtt://{GATEWAY_USER}:" in env.read_text()
    assert has_user(paths("/etc/mosquitto/roost/passwd"), GATEWAY_USER)
    assert not paths("/var/lib/roost/firstboot-error.txt").exists()


def test_run_with_an_invalid_file_keeps_settings_and_leaves_an_error(tmp_path: Path) -> None:
    paths, boot_file = _root(tmp_path)
    shutil.copy(BOOT / "roost-valid.toml", boot_file)
    run(paths, boot_file)
    before = paths("/etc/roost/roost.toml").read_text()
    env_before = paths("/etc/roost/gateway.env").read_text()
    shutil.copy(BOOT / "roost-invalid.toml", boot_file)
    report = run(paths, boot_file)
    assert report.error is not None and "gateway.name" in report.error
    assert paths("/etc/roost/roost.toml").read_text() == before
    assert paths("/etc/roost/gateway.env").read_text() == env_before  # credentials kept
    error = paths("/var/lib/roost/firstboot-error.txt").read_text()
    assert "gateway.name" in error and "not applied" in error
    assert not boot_file.exists()
    assert list(paths("/etc/roost/firstboot").glob("*.rejected"))
    # A later valid file clears the error.
    shutil.copy(BOOT / "roost-valid.toml", boot_file)
    assert run(paths, boot_file).error is None
    assert not paths("/var/lib/roost/firstboot-error.txt").exists()


def test_run_without_a_file_creates_credentials_and_a_default_hotspot(tmp_path: Path) -> None:
    paths, boot_file = _root(tmp_path)
    report = run(paths, boot_file)
    assert report.error is None
    assert "gateway broker credentials" in report.applied
    cp = keyfile(
        paths("/etc/NetworkManager/system-connections/roost-hotspot.nmconnection").read_text())
    assert cp["wifi"]["ssid"] == "roost"
    assert len(cp["wifi-security"]["psk"]) >= 8
    # Idempotent: a second run changes nothing.
    assert run(paths, boot_file).applied == []


def test_nodes_add_validates_and_refuses_duplicates(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    pw = add_node("node-a", passwd_file=passwd, acl_file=acl)
    assert len(pw) >= 20 and has_user(passwd, "node-a")
    assert "pattern write roost/v1/%u/readings" in acl.read_text()
    with pytest.raises(NodeAuthError, match="already"):
        add_node("node-a", passwd_file=passwd, acl_file=acl)
    assert add_node("node-a", passwd_file=passwd, acl_file=acl, rotate=True) != pw
    with pytest.raises(NodeAuthError, match="gateway"):
        add_node(GATEWAY_USER, passwd_file=passwd, acl_file=acl)
    for bad in ("a/b", "#", "x+y", "", "-lead"):
        with pytest.raises(NodeAuthError, match="not valid"):
            add_node(bad, passwd_file=passwd, acl_file=acl)

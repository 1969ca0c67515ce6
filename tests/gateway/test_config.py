"""Settings: precedence, validation errors that name the setting, masking, documentation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config as cfg
from gateway.config import ConfigError, load_settings, masked

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "roost.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path: Path) -> None:
    s, source = load_settings(env={}, search=(tmp_path / "none.toml",))
    assert source is None
    assert s.managed_broker and s.mqtt.port == 1883 and s.store.synchronous == "full"


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    p = write(tmp_path, '[mqtt]\nport = 1900\n[http]\nport = 9000\n[gateway]\nlog_level = "debug"')
    s, source = load_settings(p, env={"ROOST_MQTT_PORT": "1901", "ROOST_LOG_LEVEL": "error"},
                              overrides={"mqtt": {"port": 1902, "url": None}})
    assert source == p
    assert s.mqtt.port == 1902  # flag beats env beats file
    assert s.gateway.log_level == "error"  # env beats file
    assert s.http.port == 9000  # file beats default


def test_search_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    second.write_text("[mqtt]\nport = 2000")
    s, source = load_settings(env={}, search=(first, second))
    assert source == second and s.mqtt.port == 2000


@pytest.mark.parametrize(
    ("text", "env", "setting", "words"),
    [
        ('[mqtt]\nport = "abc"', {}, "mqtt.port", "expected `int`"),
        ("[mqtt]\nport = 70000", {}, "mqtt.port", "<= 65535"),
        ("[mqtt]\nprot = 1", {}, "mqtt.prot", "not a setting"),
        ('[store]\nsynchronous = "off"', {}, "store.synchronous", "invalid enum value"),
        ('[mqtt]\nurl = "http://x"', {}, "mqtt.url", "scheme"),
        ("", {"ROOST_HTTP_PORT": "eighty"}, "http.port", "expected `int`"),
        ('[ingest]\nnode_id_pattern = "(["', {}, "ingest.node_id_pattern", "regular expression"),
        ('[[ingest.mappings]]\nname = "a"\ntopic = "x/{metric}"', {}, "ingest.mappings[0]",
         "lacks"),
        ("[mqtt\nport = 1", {}, "roost.toml", "not valid TOML"),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, text: str, env: dict[str, str], setting: str,
                                 words: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(p, env=env)
    assert info.value.setting.endswith(setting)
    assert words in str(info.value)
    assert "Fix:" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_url_parsing() -> None:
    t = cfg.parse_mqtt_url("mqtts://us%40er:p%3Ass@broker.example")
    assert (t.host, t.port, t.tls, t.username, t.password) == (
        "broker.example", 8883, True, "us@er", "p:ss")
    assert cfg.parse_mqtt_url("mqtt://h").port == 1883


def test_secrets_are_masked() -> None:
    s, _ = load_settings(env={"ROOST_MQTT_URL": "mqtt://user:hunter2@h:1883"}, search=())
    shown = masked(s)
    assert shown["mqtt"]["url"] == "mqtt://user:***@h:1883"
    assert "hunter2" not in repr(shown)


def test_cli_exits_2_and_names_the_setting(tmp_path: Path) -> None:
    p = write(tmp_path, "[mqtt]\nport = 0")
    r = subprocess.run([sys.executable, "-m", "gateway", "config", "show", "--config", str(p)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "mqtt.port" in r.stderr and "Fix" in r.stderr


def test_config_show_masks_and_reflects_flags(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "show", "--json", "--mqtt-url",
         "mqtt://u:topsecret@example:1883", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    assert "topsecret" not in r.stdout
    import json

    data = json.loads(r.stdout)
    assert data["mqtt"]["url"] == "mqtt://u:***@example:1883"
    assert data["gateway"]["data_dir"] == str(tmp_path / "d")


def test_every_setting_is_documented() -> None:
    """docs/settings.md names every setting and its environment variable."""
    doc = (REPO / "docs" / "settings.md").read_text()
    missing = []
    for section, struct in cfg._SECTIONS.items():
        for key in struct.__struct_fields__:
            if f"`{section}.{key}`" not in doc:
                missing.append(f"{section}.{key}")
            if key != "mappings" and f"`{cfg.env_name(section, key)}`" not in doc:
                missing.append(cfg.env_name(section, key))
    sync_doc = (REPO / "docs" / "sync.md").read_text()
    for struct in (cfg.MqttSinkSettings, cfg.KafkaSinkSettings):
        for key in struct.__struct_fields__:
            if f"`{key}`" not in sync_doc:
                missing.append(f"sinks.{key} (docs/sync.md)")
    for key in cfg.MappingSettings.__struct_fields__:
        if not re.search(rf"`{key}`", doc):
            missing.append(f"ingest.mappings.{key}")
    assert not missing, f"document these in docs/settings.md: {missing}"

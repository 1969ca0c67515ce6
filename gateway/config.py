"""Settings: one TOML file, overridden by ``ROOST_*`` environment variables, then by CLI flags.

Validated once at start-up into frozen structs. Every error names the setting, what was wrong
with it and how to fix it (``ConfigError``); the CLI prints that and exits with code 2.

Search order for the file: ``--config PATH`` (must exist), ``./roost.toml``, then
``/etc/roost/roost.toml``; with none of them the defaults apply. Every setting is documented in
docs/settings.md (a test fails when one is missing there).

Environment: ``ROOST_<SECTION>_<KEY>`` (``ROOST_MQTT_URL``, ``ROOST_STORE_SYNCHRONOUS``); the
``[gateway]`` section's keys drop the section (``ROOST_DATA_DIR``, ``ROOST_LOG_LEVEL``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from gateway.ingest.decode import NODE_ID_PATTERN
from gateway.ingest.mapping import MappingRule

__all__ = [
    "DEFAULT_SEARCH",
    "ApiSettings",
    "BudgetSettings",
    "ConfigError",
    "KafkaSinkSettings",
    "MqttSinkSettings",
    "MqttTarget",
    "RetentionSettings",
    "RollupSettings",
    "Settings",
    "SinkSettings",
    "load_settings",
    "masked",
    "parse_mqtt_url",
]

DEFAULT_SEARCH = (Path("roost.toml"), Path("/etc/roost/roost.toml"))

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class ConfigError(Exception):
    """A setting is wrong: ``setting`` names it, the message says what is wrong and the fix."""

    def __init__(self, setting: str, problem: str, fix: str) -> None:
        super().__init__(f"{setting}: {problem}. Fix: {fix}")
        self.setting = setting
        self.problem = problem
        self.fix = fix


_Section = msgspec.Struct


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")] = "roost"
    data_dir: str = "roost-data"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class MqttSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = ""
    port: Port = 1883
    bind: str = "0.0.0.0"
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "roost-gateway"
    session_expiry_s: Annotated[int, msgspec.Meta(ge=60, le=2**32 - 1)] = 7 * 24 * 3600
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=65535)] = 30
    ca_file: str = ""
    tls_insecure: bool = False


class HttpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "0.0.0.0"
    port: Port = 8080


class ApiSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The REST API, live WebSocket and dashboard (gateway/api, docs/api.md)."""

    admin_token: str = ""
    read_auth: bool = False
    read_token: str = ""
    ws_queue: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    ws_slow_policy: Literal["drop", "disconnect"] = "drop"
    ws_backfill: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 500
    ws_backfill_s: Annotated[int, msgspec.Meta(ge=0)] = 3600
    series_points: Annotated[int, msgspec.Meta(ge=10, le=10_000)] = 500
    stale_after_s: Annotated[int, msgspec.Meta(ge=1)] = 300


class StoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    batch_max_rows: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 4000
    batch_max_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 3.0
    synchronous: Literal["normal", "full"] = "full"


class RollupSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    grace_s: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 300
    interval_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    row_group_rows: Annotated[int, msgspec.Meta(ge=1000, le=10_000_000)] = 500_000
    accept_past_days: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    accept_future_s: Annotated[int, msgspec.Meta(ge=0)] = 86_400


class RetentionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    hot_hours: Annotated[float, msgspec.Meta(ge=0)] = 168.0
    parquet_days: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    parquet_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0


class BudgetSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    min_free_bytes: Annotated[int, msgspec.Meta(ge=0)] = 256 * 1024 * 1024
    drop_parquet: Literal["delivered", "oldest", "never"] = "delivered"
    check_interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 5.0


class MappingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    topic: str
    payload: Literal["number", "json"] = "number"
    node: str = "{node_id}"
    metric: str = "{metric}"
    rename: dict[str, str] = msgspec.field(default_factory=dict)


class IngestSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_payload_bytes: Annotated[int, msgspec.Meta(ge=256, le=16 * 1024 * 1024)] = 65536
    max_pending: Annotated[int, msgspec.Meta(ge=100, le=10_000_000)] = 10_000
    node_id_pattern: str = NODE_ID_PATTERN
    quarantine_raw_bytes: Annotated[int, msgspec.Meta(ge=0, le=1024 * 1024)] = 4096
    time_sync: bool = True
    poison_after: Annotated[int, msgspec.Meta(ge=2, le=100)] = 3
    mappings: list[MappingSettings] = msgspec.field(default_factory=list)


class _SinkBase(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")]
    enabled: bool = True
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    rate_limit_rps: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    rate_limit_bps: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 60.0
    live_share: Annotated[float, msgspec.Meta(ge=0, le=0.9)] = 0.0


class MqttSinkSettings(
    _SinkBase, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="type", tag="mqtt"
):
    url: str
    topic: str = "roost/{gateway}/{node_id}/readings"
    status_topic: str = "roost/{gateway}/status"
    client_id: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_insecure: bool = False
    window: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 200


class KafkaSinkSettings(
    _SinkBase, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="type", tag="kafka"
):
    bootstrap: Annotated[str, msgspec.Meta(min_length=1)]
    topic: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = "roost.readings"
    compression: Literal["none", "gzip", "lz4", "snappy", "zstd"] = "gzip"
    idempotence: bool = False
    linger_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 5
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ca_file: str = ""


SinkSettings = MqttSinkSettings | KafkaSinkSettings


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole effective configuration."""

    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    rollup: RollupSettings = msgspec.field(default_factory=RollupSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    budget: BudgetSettings = msgspec.field(default_factory=BudgetSettings)
    sinks: list[SinkSettings] = msgspec.field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return Path(self.gateway.data_dir).expanduser().resolve()

    @property
    def managed_broker(self) -> bool:
        return not self.mqtt.url

    def mapping_rules(self) -> list[MappingRule]:
        return [
            MappingRule(m.name, m.topic, m.payload, m.node, m.metric, dict(m.rename))
            for m in self.ingest.mappings
        ]


class MqttTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed ``mqtt://`` or ``mqtts://`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def parse_mqtt_url(url: str, setting: str = "mqtt.url") -> MqttTarget:
    """Parse ``mqtt[s]://[user[:password]@]host[:port]``, naming ``setting`` on error."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(
            setting,
            f"scheme {parts.scheme or '(none)'!r} is not supported",
            "write mqtt://host:1883 or mqtts://host:8883",
        )
    if not parts.hostname:
        raise ConfigError(setting, "the URL has no host", "write mqtt://host:1883")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(setting, "the port is not a number 1-65535", "fix the port") from None
    tls = parts.scheme == "mqtts"
    return MqttTarget(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _setting_from_path(path: str) -> str:
    # msgspec paths look like "$.mqtt.port" or "$.ingest.mappings[0].topic".
    return path.removeprefix("$").lstrip(".") or "(file)"


_PATH_RE = re.compile(r" - at `([^`]*)`$")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]*)`")


def _convert(raw: Mapping[str, Any]) -> Settings:
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _PATH_RE.search(text)
        where = _setting_from_path(m.group(1)) if m else "(file)"
        problem = _PATH_RE.sub("", text)
        unknown = _UNKNOWN_RE.search(text)
        if unknown:
            setting = f"{where}.{unknown.group(1)}" if where != "(file)" else unknown.group(1)
            raise ConfigError(
                setting,
                "is not a setting Roost knows",
                "check the spelling against docs/settings.md or remove it",
            ) from None
        raise ConfigError(where, problem[0].lower() + problem[1:], "see docs/settings.md") from None


_SECTIONS: dict[str, type[_Section]] = {
    "gateway": GatewaySettings,
    "mqtt": MqttSettings,
    "http": HttpSettings,
    "api": ApiSettings,
    "store": StoreSettings,
    "ingest": IngestSettings,
    "rollup": RollupSettings,
    "retention": RetentionSettings,
    "budget": BudgetSettings,
}


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"ROOST_{key}".upper() if section == "gateway" else f"ROOST_{section}_{key}".upper()


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section, struct in _SECTIONS.items():
        for key in struct.__struct_fields__:
            name = env_name(section, key)
            if key != "mappings" and name in env:
                out.setdefault(section, {})[key] = env[name]
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in over.items():
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(section, "must be a table", f"write [{section}] in the file")
        target.update(values)
    return merged


def load_settings(
    config: Path | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    search: tuple[Path, ...] = DEFAULT_SEARCH,
) -> tuple[Settings, Path | None]:
    """Read, merge and validate the settings; returns them and the file they came from."""
    source: Path | None = None
    if config is not None:
        if not config.is_file():
            raise ConfigError(
                "--config", f"file {str(config)!r} does not exist", "give the path of a roost.toml"
            )
        source = config
    else:
        source = next((p for p in search if p.is_file()), None)
    raw: dict[str, Any] = {}
    if source is not None:
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(source), f"is not valid TOML ({exc})", "fix the syntax") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(source), f"cannot be read ({exc})", "check the file") from None
    raw = _merge(raw, _env_overrides(os.environ if env is None else env))
    if overrides:
        given = {
            k: {kk: v2 for kk, v2 in v.items() if v2 is not None} for k, v in overrides.items()
        }
        raw = _merge(raw, given)
    settings = _convert(raw)
    _check(settings)
    return settings, source


def _check(s: Settings) -> None:
    if s.mqtt.url:
        parse_mqtt_url(s.mqtt.url)
    if s.mqtt.ca_file and not Path(s.mqtt.ca_file).is_file():
        raise ConfigError("mqtt.ca_file", f"{s.mqtt.ca_file!r} does not exist", "give a PEM file")
    try:
        re.compile(s.ingest.node_id_pattern)
    except re.error as exc:
        raise ConfigError(
            "ingest.node_id_pattern", f"is not a valid regular expression ({exc})", "fix it"
        ) from None
    names = set()
    for i, m in enumerate(s.ingest.mappings):
        where = f"ingest.mappings[{i}]"
        if m.name in names:
            raise ConfigError(f"{where}.name", f"{m.name!r} is used twice", "name rules uniquely")
        names.add(m.name)
        if m.topic.startswith("roost/"):
            raise ConfigError(
                f"{where}.topic", "rules cannot remap the roost/ tree", "use another topic"
            )
        try:
            MappingRule(m.name, m.topic, m.payload, m.node, m.metric, dict(m.rename))
        except ValueError as exc:
            raise ConfigError(f"{where}", str(exc), "see docs/settings.md, mappings") from None
    sink_names: set[str] = set()
    for i, sink in enumerate(s.sinks):
        where = f"sinks[{i}]"
        if sink.name in sink_names:
            raise ConfigError(
                f"{where}.name", f"{sink.name!r} is used twice", "name sinks uniquely"
            )
        sink_names.add(sink.name)
        if isinstance(sink, MqttSinkSettings):
            parse_mqtt_url(sink.url, f"{where}.url")
            if "{node_id}" not in sink.topic:
                raise ConfigError(
                    f"{where}.topic",
                    "has no {node_id}",
                    "write e.g. roost/{gateway}/{node_id}/readings",
                )
            if bool(sink.cert_file) != bool(sink.key_file):
                raise ConfigError(
                    f"{where}.cert_file",
                    "a client certificate needs both cert_file and key_file",
                    "set both or neither",
                )
        for attr in ("ca_file", "cert_file", "key_file"):
            path = getattr(sink, attr, "")
            if path and not Path(path).is_file():
                raise ConfigError(f"{where}.{attr}", f"{path!r} does not exist", "give a PEM file")
    data_dir = s.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(
            "gateway.data_dir", f"{str(data_dir)!r} is not a directory", "choose a directory"
        )


_SECRET_KEYS = ("password", "token", "secret")


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret (and password in a URL) masked."""
    data: dict[str, Any] = msgspec.to_builtins(settings)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("***" if any(s in k for s in _SECRET_KEYS) and v else walk(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and "://" in node and "@" in node:
            return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", node)
        return node

    result: dict[str, Any] = walk(data)
    return result

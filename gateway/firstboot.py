"""First boot of the Pi image: apply ``roost.toml`` from the boot partition.

Run by ``roost-firstboot.service`` (``python -m gateway.firstboot``) before NetworkManager,
mosquitto, avahi and the gateway start. The boot partition's ``roost.toml`` holds Roost's
settings (docs/settings.md) plus two sections only the image knows::

    [wifi]                       # optional: the network to join
    ssid = "MyNet"
    password = "secret"          # WPA2 passphrase, 8-63 characters; omit for an open network
    country = "DE"               # regulatory domain, also used by the access point
    hidden = false

    [hotspot]                    # optional: the fallback access point for nodes
    ssid = "roost"               # default: the gateway name
    password = "12345678"        # default: generated, shown in /var/lib/roost/hotspot.json
    channel = 6                  # 2.4 GHz channel 1-11

What it does, every boot on which the file is present (and once on the very first boot):

- creates the gateway's own broker credentials (``/etc/roost/gateway.env``) when missing;
- valid file: writes ``/etc/roost/roost.toml`` from its Roost settings (when it has any),
  the host name (``gateway.name``), the ``roost-wifi`` NetworkManager profile (``[wifi]``) and the
  ``roost-hotspot`` profile, then moves the file to ``/etc/roost/firstboot/`` (root only) so the
  secrets do not stay on the FAT partition;
- invalid file: changes nothing, logs the error to the journal, writes it to
  ``/var/lib/roost/firstboot-error.txt`` for the dashboard, and moves the file away as well.

Every path is taken relative to ``--root`` so the tests can run it on a directory.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import math
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec

from gateway.config import ConfigError, load_settings
from gateway.nodeauth import GATEWAY_USER, new_password, set_password, write_acl

__all__ = [
    "BootConfig",
    "FirstbootError",
    "HotspotSection",
    "Paths",
    "WifiSection",
    "apply",
    "dump_toml",
    "hotspot_keyfile",
    "main",
    "parse",
    "run",
    "wifi_keyfile",
]

DATA_DIR = "/var/lib/roost"
#: In the data dir while the last boot partition roost.toml was refused: the dashboard shows it.
ERROR_FILE = "firstboot-error.txt"
HTTP_PORT = 80
WIFI_PROFILE = "roost-wifi"
HOTSPOT_PROFILE = "roost-hotspot"


class FirstbootError(Exception):
    """The boot partition's roost.toml is invalid; the message says where and how to fix it."""


class WifiSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    ssid: str
    password: str = ""
    country: str = ""
    hidden: bool = False


class HotspotSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    ssid: str = ""
    password: str = ""
    channel: Annotated[int, msgspec.Meta(ge=1, le=11)] = 6


@dataclass(frozen=True)
class BootConfig:
    """A parsed and validated boot-partition file."""

    settings: dict[str, Any]
    """Roost's settings as written to /etc/roost/roost.toml (empty: the file had none)."""
    name: str | None
    wifi: WifiSection | None
    hotspot: HotspotSection | None


@dataclass(frozen=True)
class Paths:
    """Where everything goes, under ``root`` (``/`` on the Pi)."""

    root: Path = Path("/")

    def __call__(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def live(self) -> bool:
        return self.root.resolve() == Path("/")


@dataclass
class Report:
    """What a run did, for the journal and the tests."""

    applied: list[str] = field(default_factory=list)
    error: str | None = None


# -- parsing ------------------------------------------------------------------------------------

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_HEX64 = re.compile(r"^[0-9A-Fa-f]{64}$")


def _check_psk(password: str, where: str) -> None:
    if _HEX64.match(password):
        return
    if not 8 <= len(password) <= 63 or not all(32 <= ord(c) < 127 for c in password):
        raise FirstbootError(
            f"{where}: a WPA2 passphrase is 8 to 63 printable ASCII characters "
            f"(this one has {len(password)})"
        )


def _check_ssid(ssid: str, where: str) -> None:
    n = len(ssid.encode("utf-8"))
    if not 1 <= n <= 32:
        raise FirstbootError(f"{where}: an SSID is 1 to 32 bytes (this one has {n})")
    if any(ord(c) < 32 for c in ssid):
        raise FirstbootError(f"{where}: the SSID contains control characters")


def _section(raw: dict[str, Any], key: str, cls: type[Any]) -> Any:
    if key not in raw:
        return None
    try:
        return msgspec.convert(raw[key], cls)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$.", f"`{key}.").replace("`$`", f"`{key}`")
        raise FirstbootError(f"[{key}]: {text}") from None


def parse(text: str) -> BootConfig:
    """Parse and validate the boot partition's roost.toml; raises FirstbootError."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FirstbootError(f"not valid TOML: {exc}") from None
    wifi: WifiSection | None = _section(raw, "wifi", WifiSection)
    hotspot: HotspotSection | None = _section(raw, "hotspot", HotspotSection)
    if wifi is not None:
        _check_ssid(wifi.ssid, "wifi.ssid")
        if wifi.password:
            _check_psk(wifi.password, "wifi.password")
        if wifi.country and not _COUNTRY.match(wifi.country.upper()):
            raise FirstbootError(
                f"wifi.country: {wifi.country!r} is not a two-letter country code such as DE or US"
            )
        wifi = msgspec.structs.replace(wifi, country=wifi.country.upper())
    if hotspot is not None:
        if hotspot.ssid:
            _check_ssid(hotspot.ssid, "hotspot.ssid")
        if hotspot.password:
            _check_psk(hotspot.password, "hotspot.password")

    settings = {k: v for k, v in raw.items() if k not in ("wifi", "hotspot")}
    mqtt = settings.get("mqtt")
    if isinstance(mqtt, dict) and mqtt.get("url"):
        raise FirstbootError(
            "mqtt.url: the Pi image's gateway uses the Pi's own mosquitto; remove mqtt.url "
            "(nodes publish to <name>.local:1883)"
        )
    name: str | None = None
    if settings:
        gw = settings.get("gateway")
        if isinstance(gw, dict):
            gw.pop("data_dir", None)  # the image's data dir is fixed: /var/lib/roost
        settings = _with_image_defaults(settings)
        _validate_settings(settings)
        gw = settings.get("gateway", {})
        name = gw.get("name") if isinstance(gw, dict) else None
    return BootConfig(settings=settings, name=name, wifi=wifi, hotspot=hotspot)


def _with_image_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    out = dict(settings)
    gw = out.get("gateway", {})
    out["gateway"] = {**(gw if isinstance(gw, dict) else {}), "data_dir": DATA_DIR}
    http = out.get("http", {})
    if isinstance(http, dict) and "port" not in http:
        out["http"] = {**http, "port": HTTP_PORT}
    # Key order: gateway first, like the defaults file.
    return {"gateway": out.pop("gateway"), **out}


def _validate_settings(settings: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="roost-firstboot-") as tmp:
        path = Path(tmp) / "roost.toml"
        path.write_text(dump_toml(settings), encoding="utf-8")
        try:
            load_settings(path, env={})
        except ConfigError as exc:
            raise FirstbootError(str(exc)) from None


# -- TOML writing -------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _string(k)


def _string(s: str) -> str:
    # A JSON string is a TOML basic string, except that TOML wants DEL escaped too.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise FirstbootError(f"cannot write a value of type {type(v).__name__} ({v!r})")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump_toml(data: dict[str, Any]) -> str:
    """TOML for settings: sections of scalars, inline tables and arrays of tables.

    Checked by reading it back: what is written parses to exactly ``data``.
    """
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if isinstance(v, dict) or _is_table_array(v):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in tables:
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]"]
            nested = []
            for kk, vv in v.items():
                if _is_table_array(vv):
                    nested.append((kk, vv))
                else:
                    lines.append(f"{_key(kk)} = {_value(vv)}")
            for kk, vv in nested:
                for item in vv:
                    lines += ["", f"[[{_key(k)}.{_key(kk)}]]"]
                    lines += [f"{_key(a)} = {_value(b)}" for a, b in item.items()]
        else:
            for item in v:
                lines += ["", f"[[{_key(k)}]]"]
                lines += [f"{_key(a)} = {_value(b)}" for a, b in item.items()]
    text = "\n".join(lines).lstrip("\n") + "\n"
    if tomllib.loads(text) != data:
        raise FirstbootError("internal error: the settings could not be written as TOML")
    return text


# -- NetworkManager keyfiles ----------------------------------------------------------------


def _kf(value: str) -> str:
    """A GLib key-file value: backslash escapes, leading blank kept."""
    out = (
        value.replace("\\", "\\\\")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\r", "\\r")
    )
    return "\\s" + out[1:] if out.startswith(" ") else out


def _uuid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.roost.local"))


def wifi_keyfile(wifi: WifiSection) -> str:
    """The ``roost-wifi`` client profile (autoconnect, DHCP)."""
    security = (
        f"\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={_kf(wifi.password)}\n" if wifi.password else ""
    )
    return (
        "# Written by roost-firstboot from the boot partition's roost.toml.\n"
        f"[connection]\nid={WIFI_PROFILE}\nuuid={_uuid(WIFI_PROFILE)}\ntype=wifi\n"
        "autoconnect=true\nautoconnect-priority=10\n\n"
        f"[wifi]\nmode=infrastructure\nssid={_kf(wifi.ssid)}\n"
        f"hidden={'true' if wifi.hidden else 'false'}\n"
        f"{security}\n"
        "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\naddr-gen-mode=default\n"
    )


def hotspot_keyfile(ssid: str, password: str, channel: int) -> str:
    """The ``roost-hotspot`` access point: WPA2, fixed 2.4 GHz channel, shared IPv4 (DHCP+NAT)."""
    return (
        "# Written by roost-firstboot; brought up by roost-wifi-fallback when there is no Wi-Fi.\n"
        f"[connection]\nid={HOTSPOT_PROFILE}\nuuid={_uuid(HOTSPOT_PROFILE)}\ntype=wifi\n"
        "autoconnect=false\n\n"
        f"[wifi]\nmode=ap\nssid={_kf(ssid)}\nband=bg\nchannel={channel}\n\n"
        f"[wifi-security]\nkey-mgmt=wpa-psk\npsk={_kf(password)}\nproto=rsn\n"
        "pairwise=ccmp\ngroup=ccmp\n\n"
        "[ipv4]\nmethod=shared\naddress1=10.42.0.1/24\n\n[ipv6]\nmethod=ignore\n"
    )


# -- applying -----------------------------------------------------------------------------------


def _log(message: str, level: int = 6) -> None:
    # "<N>" is the syslog priority; journald reads it from a service's stderr.
    print(f"<{level}>roost-firstboot: {message}", file=sys.stderr, flush=True)


def _write(path: Path, text: str, mode: int, owner: tuple[str, str] | None = None) -> None:
    """Atomic write; ``owner`` (user, group) applies when running as root and both exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.chmod(mode)
    if owner is not None and os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            os.chown(tmp, pwd.getpwnam(owner[0]).pw_uid, grp.getgrnam(owner[1]).gr_gid)
    tmp.replace(path)


def _best_effort(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(cmd, capture_output=True, timeout=30, check=False)


def ensure_gateway_credentials(paths: Paths) -> bool:
    """The gateway's own broker user and /etc/roost/gateway.env; ``True`` when created."""
    env_file = paths("/etc/roost/gateway.env")
    if env_file.is_file():
        return False
    password = new_password()
    set_password(paths("/etc/mosquitto/roost/passwd"), GATEWAY_USER, password)
    write_acl(paths("/etc/mosquitto/roost/acl"))
    _write(
        env_file,
        "# The gateway's credentials on the Pi's mosquitto (roost-firstboot).\n"
        f"ROOST_MQTT_URL=mqtt://{GATEWAY_USER}:{password}@127.0.0.1:1883\n",
        0o600,
    )
    return True


def _set_hostname(paths: Paths, name: str) -> None:
    _write(paths("/etc/hostname"), name + "\n", 0o644)
    hosts = paths("/etc/hosts")
    lines = hosts.read_text(encoding="utf-8").splitlines() if hosts.is_file() else [
        "127.0.0.1\tlocalhost"
    ]
    lines = [ln for ln in lines if not ln.startswith("127.0.1.1")]
    lines.append(f"127.0.1.1\t{name}")
    _write(hosts, "\n".join(lines) + "\n", 0o644)
    if paths.live:
        try:
            socket.sethostname(name)
        except OSError as exc:
            _log(f"could not set the running host name ({exc}); it applies after a reboot", 4)


def _hotspot(paths: Paths, name: str, section: HotspotSection | None, force: bool) -> bool:
    profile = paths(f"/etc/NetworkManager/system-connections/{HOTSPOT_PROFILE}.nmconnection")
    if profile.is_file() and not force:
        return False
    info_file = paths(f"{DATA_DIR}/hotspot.json")
    old: dict[str, Any] = {}
    if info_file.is_file():
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(info_file.read_text(encoding="utf-8"))
    s = section or HotspotSection()
    ssid = s.ssid or name
    password = s.password or str(old.get("password") or "") or new_password()[:16]
    _write(profile, hotspot_keyfile(ssid, password, s.channel), 0o600)
    info = {"ssid": ssid, "password": password, "channel": s.channel, "address": "10.42.0.1"}
    _write(info_file, json.dumps(info) + "\n", 0o640, owner=("roost", "roost"))
    return True


def _current_name(paths: Paths) -> str:
    try:
        settings, _ = load_settings(paths("/etc/roost/roost.toml"), env={})
    except ConfigError:
        return "roost"
    return settings.gateway.name


def apply(paths: Paths, cfg: BootConfig) -> list[str]:
    """Apply a valid boot file; returns what was applied."""
    done: list[str] = []
    if cfg.settings:
        _write(
            paths("/etc/roost/roost.toml"),
            "# Written by roost-firstboot from the boot partition's roost.toml.\n"
            + dump_toml(cfg.settings),
            0o640,
            owner=("root", "roost"),
        )
        done.append("settings")
    name = cfg.name or _current_name(paths)
    if cfg.name:
        _set_hostname(paths, cfg.name)
        done.append(f"hostname {cfg.name}")
    if cfg.wifi is not None:
        wifi_profile = f"/etc/NetworkManager/system-connections/{WIFI_PROFILE}.nmconnection"
        _write(paths(wifi_profile), wifi_keyfile(cfg.wifi), 0o600)
        done.append(f"wifi {cfg.wifi.ssid!r}")
        if cfg.wifi.country:
            _write(
                paths("/etc/modprobe.d/roost-wifi-country.conf"),
                f"options cfg80211 ieee80211_regdom={cfg.wifi.country}\n",
                0o644,
            )
            done.append(f"country {cfg.wifi.country}")
            if paths.live:
                _best_effort(["iw", "reg", "set", cfg.wifi.country])
    if _hotspot(paths, name, cfg.hotspot, force=cfg.hotspot is not None or cfg.name is not None):
        done.append("hotspot")
    if paths.live:
        # Raspberry Pi OS keeps Wi-Fi soft-blocked until it is configured.
        _best_effort(["rfkill", "unblock", "wifi"])
        _best_effort(["nmcli", "connection", "reload"])
    return done


def _archive(paths: Paths, boot_file: Path, suffix: str) -> Path:
    folder = paths("/etc/roost/firstboot")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    target = folder / f"roost.toml.{time.strftime('%Y%m%dT%H%M%S')}.{suffix}"
    shutil.copyfile(boot_file, target)
    target.chmod(0o600)
    boot_file.unlink()
    return target


def run(paths: Paths, boot_file: Path) -> Report:
    """One first-boot pass; never raises for a bad boot file (see the module docstring)."""
    report = Report()
    if ensure_gateway_credentials(paths):
        report.applied.append("gateway broker credentials")
    error_file = paths(f"{DATA_DIR}/{ERROR_FILE}")
    if boot_file.is_file():
        try:
            cfg = parse(boot_file.read_text(encoding="utf-8"))
        except (FirstbootError, UnicodeDecodeError, OSError) as exc:
            report.error = str(exc)
        if report.error is None:
            report.applied += apply(paths, cfg)
            error_file.unlink(missing_ok=True)
            where = _archive(paths, boot_file, "applied")
            _log(f"applied {boot_file} ({', '.join(report.applied)}); moved to {where}")
        else:
            where = _archive(paths, boot_file, "rejected")
            message = (
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} {boot_file} was not applied: "
                f"{report.error}\nThe gateway runs with its previous settings. Fix the file and "
                f"put it on the boot partition again (the rejected copy is {where}).\n"
            )
            _write(error_file, message, 0o644, owner=("roost", "roost"))
            _log(f"{boot_file} is invalid, nothing applied: {report.error}", 3)
    if _hotspot(paths, _current_name(paths), None, force=False):
        report.applied.append("hotspot")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.firstboot", description=__doc__)
    parser.add_argument("--boot-file", type=Path, default=Path("/boot/firmware/roost.toml"))
    parser.add_argument("--root", type=Path, default=Path("/"))
    args = parser.parse_args(argv)
    paths = Paths(args.root)
    boot_file = args.boot_file if args.boot_file.is_absolute() else Path.cwd() / args.boot_file
    report = run(paths, boot_file)
    if not report.applied and report.error is None:
        _log("nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())

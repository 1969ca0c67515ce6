"""Static checks of the Pi image's files: shellcheck, systemd-analyze verify, mosquitto config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.nodeauth import ACL_TEXT, GATEWAY_USER
from tests.image.imagetools import BOOT, IMAGE, ensure_tools

pytestmark = pytest.mark.integration

SCRIPTS = [
    IMAGE / "provision.sh",
    IMAGE / "build.sh",
    IMAGE / "files" / "wifi-fallback",
    *sorted((IMAGE / "pi-gen").rglob("*.sh")),
    BOOT / "check-boot.sh",
    BOOT.parent / "verdict.sh",
    *sorted((BOOT.parent / "vm").glob("*.sh")),
]
UNITS = sorted(p.name for p in (IMAGE / "files").iterdir() if p.suffix in (".service", ".timer")
               and p.name != "roost.avahi.service")


def test_shellcheck() -> None:
    ensure_tools({"shellcheck": "shellcheck"})
    r = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _verify_root(tmp_path: Path, units: list[Path]) -> subprocess.CompletedProcess[str]:
    """A root with the host's system units, stubs for the image's services and executables."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in ("mosquitto", "NetworkManager", "avahi-daemon"):
        (root / f"usr/lib/systemd/system/{name}.service").write_text(
            "[Service]\nExecStart=/bin/true\n")
    for exe in ("opt/roost/venv/bin/roost", "opt/roost/venv/bin/python",
                "usr/local/lib/roost/wifi-fallback", "bin/true", "bin/false",
                "usr/local/lib/roost-imagetest/check-boot.sh"):
        (root / exe).parent.mkdir(parents=True, exist_ok=True)
        (root / exe).write_text("#!/bin/sh\n")
        (root / exe).chmod(0o755)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, unit_dir)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}",
         *(f"/etc/systemd/system/{u.name}" for u in units)],
        capture_output=True, text=True, check=False,
    )


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify exits 0 on unknown keys, so any output on stderr is a failure."""
    if shutil.which("systemd-analyze") is None or not Path("/usr/lib/systemd/system").is_dir():
        pytest.skip("systemd-analyze or the system's unit directory is missing")
    units = [IMAGE / "files" / u for u in UNITS] + [
        BOOT / "roost-imagetest.service", BOOT / "roost-imagetest-broken.service"]
    r = _verify_root(tmp_path, units)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """The negative control of the check above."""
    if shutil.which("systemd-analyze") is None or not Path("/usr/lib/systemd/system").is_dir():
        pytest.skip("systemd-analyze or the system's unit directory is missing")
    bad = tmp_path / "roost-typo.service"
    text = (IMAGE / "files" / "roost.service").read_text()
    bad.write_text(text.replace("WatchdogSec=", "WatchDogSec="))
    r = _verify_root(tmp_path, [bad])
    assert "WatchDogSec" in r.stderr


def test_gateway_unit_is_notify_with_watchdog_and_hardening() -> None:
    text = (IMAGE / "files" / "roost.service").read_text()
    for line in ("Type=notify", "WatchdogSec=30", "Restart=always", "ProtectSystem=strict",
                 "PrivateTmp=yes", "NoNewPrivileges=yes", "ReadWritePaths=/var/lib/roost",
                 "User=roost", "EnvironmentFile=/etc/roost/gateway.env"):
        assert line in text.splitlines(), line


def test_mosquitto_config_has_the_managed_brokers_durability_settings(tmp_path: Path) -> None:
    from gateway.broker.managed import ManagedBroker

    image = (IMAGE / "files" / "mosquitto.conf").read_text().splitlines()
    managed = ManagedBroker(tmp_path).config_text().splitlines()
    # The same durability values as the managed broker (docs/broker.md), read from its config.
    for key in ("max_queued_messages", "max_queued_bytes", "autosave_interval",
                "max_inflight_messages", "persistence", "persistent_client_expiration"):
        want = next(ln for ln in managed if ln.split()[0] == key)
        assert want in image, f"image mosquitto.conf lacks {want!r}"
    for setting in ("user mosquitto", "allow_anonymous false",
                    "password_file /etc/mosquitto/roost/passwd",
                    "acl_file /etc/mosquitto/roost/acl", "listener 1883"):
        assert setting in image, setting


def test_acl_pattern_confines_nodes_to_their_own_topics() -> None:
    lines = ACL_TEXT.splitlines()
    assert "pattern write roost/v1/%u/readings" in lines
    assert "pattern read roost/v1/%u/cmd" in lines
    assert f"user {GATEWAY_USER}" in lines
    assert not any(ln.startswith("pattern") and "#" in ln for ln in lines)


def test_journal_is_volatile_and_capped() -> None:
    text = (IMAGE / "files" / "journald.conf").read_text()
    assert "Storage=volatile" in text and "RuntimeMaxUse=" in text


def test_noatime_edit_of_fstab(tmp_path: Path) -> None:
    """The sed expression provision.sh applies to /etc/fstab."""
    script = (IMAGE / "provision.sh").read_text()
    expr = next(ln for ln in script.splitlines() if "noatime/!s" in ln).strip()
    expr = expr.split("'")[1]
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "proc /proc proc defaults 0 0\n"
        "PARTUUID=abc-01 /boot/firmware vfat defaults 0 2\n"
        "PARTUUID=abc-02 / ext4 defaults 0 1\n"
        "PARTUUID=abc-03 /data ext4 defaults,noatime 0 2\n")
    subprocess.run(["sed", "-E", "-i", expr, str(fstab)], check=True)
    lines = fstab.read_text().splitlines()
    assert lines[2] == "PARTUUID=abc-02 / ext4 defaults,noatime 0 1"
    assert lines[3] == "PARTUUID=abc-03 /data ext4 defaults,noatime 0 2"
    assert lines[1] == "PARTUUID=abc-01 /boot/firmware vfat defaults 0 2"

"""The Pi image's provisioning, proven by booting it: a Debian bookworm rootfs (mmdebstrap, cached
under /var/cache/roost-image-test), provisioned by deploy/pi-image/provision.sh with the current
wheel, booted twice in systemd-nspawn. A check unit inside writes a verdict file; nspawn's exit
code says nothing (it exits 0 whatever the check found).

Boot 1: the boot partition has tests/image/boot/roost-valid.toml. Boot 2: an invalid one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.imagetools import (
    BOOT,
    base_tarball,
    ensure_tools,
    is_root,
    nspawn,
    provisioned_root,
)

pytestmark = pytest.mark.integration

UNITS = [
    "roost.service",
    "roost-firstboot.service",
    "roost-wifi-fallback.service",
    "roost-wifi-fallback.timer",
]


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    if not is_root():
        pytest.skip("mmdebstrap --mode=root and systemd-nspawn --boot need root")
    ensure_tools({"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container"})
    work = Path(tempfile.mkdtemp(prefix="roost-image-", dir="/var/tmp"))
    try:
        root = provisioned_root(work, base_tarball())
        # The test's check unit, its negative control and the boot partition's roost.toml.
        libdir = root / "usr/local/lib/roost-imagetest"
        libdir.mkdir(parents=True)
        shutil.copy(BOOT / "check-boot.sh", libdir / "check-boot.sh")
        shutil.copy(BOOT.parent / "verdict.sh", libdir / "verdict.sh")
        shutil.copy(BOOT / "roost-imagetest-broken.service", root / "etc/systemd/system")
        yield root
    finally:
        shutil.rmtree(work, ignore_errors=True)


def boot(root: Path, mode: str, toml: str) -> dict[str, dict[str, str]]:
    unit = (BOOT / "roost-imagetest.service").read_text().replace(" MODE", f" {mode}")
    (root / "etc/systemd/system/roost-imagetest.service").write_text(unit)
    shutil.copy(BOOT / toml, root / "boot/firmware/roost.toml")
    verdict = root / "var/lib/roost-imagetest/verdict.jsonl"
    verdict.unlink(missing_ok=True)
    r = nspawn(
        root, "--boot", "--private-network", "--console=pipe",
        "systemd.wants=roost-imagetest.service", timeout=420,
    )
    log = r.stdout[-4000:] + r.stderr[-2000:]
    assert verdict.is_file(), f"no verdict from the {mode} boot (nspawn {r.returncode}):\n{log}"
    checks = {}
    for line in verdict.read_text().splitlines():
        item = json.loads(line)
        checks[item["check"]] = item
    journal = root / "var/lib/roost-imagetest/journal.txt"
    print(f"--- {mode} boot verdict ---")
    for item in checks.values():
        print(f"{item['ok']:>5}  {item['check']}: {item['detail']}")
    assert "done" in checks, f"the check script did not finish:\n{log}"
    failed = {k: v["detail"] for k, v in checks.items() if v["ok"] == "false"}
    tail = journal.read_text()[-6000:] if journal.is_file() else log
    assert not failed, f"{mode} boot: failed checks {json.dumps(failed, indent=1)}\n{tail}"
    return checks


def test_units_verify_in_the_provisioned_root(rootfs: Path) -> None:
    """systemd-analyze verify exits 0 on unknown keys: any output on stderr is a failure."""
    r = subprocess.run(
        ["systemd-analyze", "verify", f"--root={rootfs}",
         *(f"/etc/systemd/system/{u}" for u in UNITS)],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_boot_with_a_valid_roost_toml(rootfs: Path) -> None:
    checks = boot(rootfs, "valid", "roost-valid.toml")
    expected = {
        "mosquitto_active", "gateway_active", "gateway_connected", "firstboot_unit",
        "firstboot_moved", "firstboot_hostname", "firstboot_settings", "nm_loaded_profiles",
        "nm_wifi_ssid", "nm_hotspot", "nodes_add", "mqtt_connect", "wrong_password_refused",
        "anonymous_refused", "gateway_ingested", "acl_other_topic_refused", "no_failed_units",
        "negative_control_detected", "broker_durability", "api_health",
    }
    assert expected <= checks.keys(), expected - checks.keys()
    if checks["api_health"]["ok"] == "skip":
        print(f"SKIPPED api_health: {checks['api_health']['detail']}")


def test_second_boot_with_an_invalid_roost_toml_keeps_running(rootfs: Path) -> None:
    checks = boot(rootfs, "invalid", "roost-invalid.toml")
    assert {"invalid_error_file", "invalid_kept_settings", "gateway_active",
            "no_failed_units"} <= checks.keys()

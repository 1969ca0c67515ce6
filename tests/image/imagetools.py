"""Helpers for the Pi image tests: apt tools, the cached Debian rootfs, nspawn runs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "deploy" / "pi-image"
BOOT = Path(__file__).resolve().parent / "boot"
CACHE = Path(os.environ.get("ROOST_IMAGE_CACHE", "/var/cache/roost-image-test"))
SUITE = "bookworm"
# The host's own apt sources (the archive this machine is set up to reach): mmdebstrap pastes an
# existing sources file into the chroot as it is, so no archive address lives in this repo.
HOST_SOURCES = next(
    (p for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
     if p.is_file()),
    None,
)
MIRROR = [str(HOST_SOURCES)] if HOST_SOURCES else []
# What a minimal booting system needs besides the image's own packages.txt.
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "passwd", "procps", "iproute2"]


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_tools(tools: dict[str, str]) -> None:
    """Install the apt packages providing ``tools`` (command -> package) when missing, or skip."""
    missing = {pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None}
    if not missing:
        return
    if not is_root():
        pytest.skip(f"needs {', '.join(sorted(missing))} and is not root to apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *sorted(missing)],
        env=env, capture_output=True, text=True, check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"apt-get install {' '.join(sorted(missing))} failed: {r.stderr[-500:]}")


def image_packages() -> list[str]:
    lines = (IMAGE / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# The VM test's rootfs (test_vm.py) also needs a kernel (its modules give mac80211_hwsim), udev
# for NetworkManager to see the radios, a DHCP client and libstdc++ for the node on the second
# radio. A separate tarball: the nspawn tests do not pay for the kernel and its initramfs.
VM_PACKAGES = ["linux-image-amd64", "udev", "kmod", "isc-dhcp-client", "libstdc++6"]


def base_tarball(extra: tuple[str, ...] = (), name: str = "base") -> Path:
    """A bookworm amd64 minbase + systemd + the image's packages (+ ``extra``), cached by the
    package list under ``name``."""
    pkgs = sorted(set(BASE_PACKAGES + image_packages() + list(extra)))
    sources = HOST_SOURCES.read_text() if HOST_SOURCES else ""
    key = hashlib.sha256(f"{SUITE} {sources} {' '.join(pkgs)}".encode()).hexdigest()[:16]
    tar = CACHE / f"{name}-{SUITE}-{key}.tar"
    with cache_lock(name):
        if tar.is_file():
            return tar
        tmp = tar.with_name(tar.stem + ".part.tar")
        r = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
             f"--include={','.join(pkgs)}", SUITE, str(tmp), *MIRROR],
            capture_output=True, text=True, check=False,
        )
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            pytest.fail(f"mmdebstrap failed:\n{r.stderr[-3000:]}")
        tmp.replace(tar)
        for old in CACHE.glob(f"{name}-{SUITE}-*.tar"):
            if old != tar:
                old.unlink()
    return tar


def provisioned_root(work: Path, tarball: Path) -> Path:
    """``tarball`` unpacked into ``work/root`` and provisioned by provision.sh with the current
    wheel (in nspawn, the way pi-gen's chroot would run it)."""
    wheel = build_wheel(work / "dist")
    house = wheelhouse(wheel)
    root = work / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True)
    src = root / "root" / "roost-src"
    shutil.copytree(IMAGE, src / "deploy" / "pi-image")
    (src / "docs").mkdir(parents=True)
    if (REPO / "docs" / "pi-image.md").is_file():
        shutil.copy(REPO / "docs" / "pi-image.md", src / "docs")
    shutil.copy(wheel, root / "root" / wheel.name)
    r = nspawn(
        root, "--pipe", f"--bind-ro={house}:/root/wheelhouse",
        "/bin/bash", "/root/roost-src/deploy/pi-image/provision.sh",
        "--wheel", f"/root/{wheel.name}", "--wheelhouse", "/root/wheelhouse",
    )
    (work / "provision.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"provision.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return root


def build_wheel(out: Path) -> Path:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "-w", str(out), "--no-deps", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("roost-*.whl")
    return wheel


def wheelhouse(wheel: Path) -> Path:
    """The gateway's dependencies as wheels, cached by pyproject.toml (the host is bookworm)."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    house = CACHE / f"wheelhouse-{key}"
    with cache_lock("wheelhouse"):
        if not (house / ".complete").is_file():
            house.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "-d", str(house), str(wheel)],
                capture_output=True, text=True, check=False,
            )
            if r.returncode != 0:
                pytest.fail(f"pip download of the gateway's dependencies failed:\n{r.stderr}")
            (house / ".complete").touch()
            for old in CACHE.glob("wheelhouse-*"):
                if old != house:
                    shutil.rmtree(old, ignore_errors=True)
    return house


def nspawn(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """systemd-nspawn with the options this machine needs (issue 8: --register=no --keep-unit)."""
    cmd = ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", *args]
    return subprocess.run(
        ["timeout", "-k", "30", str(int(timeout)), *cmd],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )

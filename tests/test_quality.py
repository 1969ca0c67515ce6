"""The code is typed and linted: mypy --strict on the gateway package, ruff on the gateway,
its tests, the benchmarks and the firmware."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "gateway", "tests", "bench", "firmware"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_lock_file_records_registry_addresses() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if name.endswith(("uv.lock", "poetry.lock", "package-lock.json")) or (
            Path(name).name.startswith("requirements") and name.endswith((".txt", ".lock"))
        ):
            assert "://" not in (REPO / name).read_text(), f"{name} records download addresses"

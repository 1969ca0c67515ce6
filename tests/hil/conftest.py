"""Fixtures of the HIL suite: the boards (real on --hil-port, else virtual), the bench (gateway,
broker, subscriber), the flashed fleet; and the report (summary + JUnit XML) at the end."""

from __future__ import annotations

import contextlib
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.virtual.board import VirtualBoard
from tests.hil.rig import Bench, Board, roost_flash

pytestmark = pytest.mark.integration

# what the rig writes into every node's config.json besides the flags of `roost flash`
RIG_CONFIG: dict[str, Any] = {
    "wdt_ms": 3000, "safe_after": 3, "backoff_max_s": 2, "status_s": 60,
    "mqtt": {"keepalive_s": 10},
}

_results: list[dict[str, Any]] = []
_boards: list[Board] = []
_started = time.monotonic()


@pytest.fixture(scope="package")
def boards(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[list[Board]]:
    """The boards under test, blank virtual boards unless --hil-port names real ones."""
    opt = request.config.getoption
    made: list[Board] = []
    virtual: list[VirtualBoard] = []
    try:
        ports = [p for p in str(opt("--hil-port")).split(",") if p]
        if ports:
            kind = str(opt("--hil-board"))
            for i, port in enumerate(ports):
                made.append(Board(f"{kind}@{port}", kind, port, f"hil-{kind}-{i + 1}"))
        else:
            home = tmp_path_factory.mktemp("hil-boards")
            kinds = [k for k in str(opt("--hil-virtual")).split(",") if k]
            for i, kind in enumerate(kinds):
                vb = VirtualBoard(home / f"{kind}-{i + 1}", board=kind,
                                  unique_id=f"e66141{i:02x}e7452d2f")
                vb.start()
                virtual.append(vb)
                made.append(Board(f"virtual {kind} #{i + 1}", kind, vb.port,
                                  f"hil-{kind}-{i + 1}", virtual=vb))
        _boards[:] = made
        yield made
    finally:
        for b in made:
            b.close()
        for vb in virtual:
            vb.stop()


@pytest.fixture(scope="package")
def bench(request: pytest.FixtureRequest, boards: list[Board],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    if not shutil.which("mosquitto_sub"):
        pytest.skip("mosquitto_sub (mosquitto-clients) is needed by the rig")
    real = any(b.virtual is None for b in boards)
    b = Bench(tmp_path_factory.mktemp("hil-bench"), "0.0.0.0" if real else "127.0.0.1")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="package")
def flashed(request: pytest.FixtureRequest, boards: list[Board], bench: Bench,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every board flashed with `roost flash` (the first scenario checks how that went)."""
    opt = request.config.getoption
    real = any(b.virtual is None for b in boards)
    host = str(opt("--hil-gateway-host")) or "127.0.0.1"
    if real and host == "127.0.0.1":
        pytest.fail("real boards need --hil-gateway-host (this machine's address on their Wi-Fi)")
    ssid = str(opt("--hil-wifi-ssid"))
    wifi = (ssid, str(opt("--hil-wifi-password"))) if ssid else None
    tmp = tmp_path_factory.mktemp("hil-flash")
    out: dict[str, Any] = {}
    for board in boards:
        t = time.monotonic()
        run = roost_flash(board, bench, host, RIG_CONFIG, wifi, tmp)
        out[board.node_id] = {"run": run, "seconds": time.monotonic() - t}
        if run.returncode == 0:
            with contextlib.suppress(AssertionError):
                s = board.status(timeout=15)
                board.fw = str(s.get("fw", ""))
        for line in run.stderr.splitlines():
            if "MicroPython" in line:
                board.micropython = line.split("MicroPython", 1)[1].split("(")[0].strip()
    return out


@pytest.fixture
def fleet(flashed: dict[str, Any], boards: list[Board]) -> list[Board]:
    """The flashed boards, each answering on its console."""
    for b in boards:
        if flashed[b.node_id]["run"].returncode != 0:
            pytest.fail(f"{b.label} was not flashed: {flashed[b.node_id]['run'].stderr[-500:]}")
        b.status(timeout=20)
    return boards


# -- the report -------------------------------------------------------------------------------
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/hil/" not in report.nodeid.replace("\\", "/"):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        msg = ""
        if report.failed:
            msg = str(report.longrepr).splitlines()[-1] if report.longrepr else "failed"
        elif report.skipped and isinstance(report.longrepr, tuple):
            msg = str(report.longrepr[2])
        _results.append({"name": report.nodeid.split("::")[-1], "outcome": report.outcome,
                         "seconds": report.duration, "message": msg})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _results:
        return
    lines = ["roost HIL run", ""]
    for b in _boards:
        kind = "virtual" if b.virtual is not None else "real"
        lines.append(f"board  {b.label:<24} {kind:<8} {b.kind:<7} port {b.port}  node {b.node_id}"
                     f"  fw {b.fw or '?'}  MicroPython {b.micropython or '?'}")
    lines.append("")
    for r in _results:
        word = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[r["outcome"]]
        extra = f"  ({r['message']})" if r["message"] else ""
        lines.append(f"{word}  {r['name']:<44} {r['seconds']:6.1f}s{extra}")
    n = {k: sum(r["outcome"] == k for r in _results) for k in ("passed", "failed", "skipped")}
    lines += ["", f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped "
              f"in {time.monotonic() - _started:.0f}s"]
    folder = str(config.getoption("--hil-report"))
    out = Path(folder) if folder else Path(config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    out.mkdir(parents=True, exist_ok=True)
    (out / "hil-summary.txt").write_text("\n".join(lines) + "\n")
    _junit(out / "hil-junit.xml", n)
    lines.append(f"report: {out / 'hil-summary.txt'}, {out / 'hil-junit.xml'}")
    terminalreporter.write_sep("=", "HIL summary")
    for line in lines:
        terminalreporter.write_line(line)


def _junit(path: Path, n: dict[str, int]) -> None:
    suite = ET.Element("testsuite", name="roost-hil", tests=str(len(_results)),
                       failures=str(n["failed"]), skipped=str(n["skipped"]), errors="0",
                       time=f"{sum(r['seconds'] for r in _results):.3f}")
    props = ET.SubElement(suite, "properties")
    for i, b in enumerate(_boards):
        for key, value in (("label", b.label), ("board", b.kind), ("port", b.port),
                           ("node_id", b.node_id), ("fw", b.fw), ("micropython", b.micropython),
                           ("virtual", str(b.virtual is not None).lower())):
            ET.SubElement(props, "property", name=f"board.{i}.{key}", value=value)
    for r in _results:
        case = ET.SubElement(suite, "testcase", classname="tests.hil", name=r["name"],
                             time=f"{r['seconds']:.3f}")
        if r["outcome"] == "failed":
            ET.SubElement(case, "failure", message=r["message"])
        elif r["outcome"] == "skipped":
            ET.SubElement(case, "skipped", message=r["message"])
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


@pytest.fixture
def vboard(tmp_path: Path) -> Iterator[VirtualBoard]:
    """One blank virtual board behind a pty with a stable link (for flash and REPL tests)."""
    b = VirtualBoard(tmp_path / "b", link=tmp_path / "ttyVB0")
    b.start()
    yield b
    b.stop()

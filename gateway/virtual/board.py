"""A virtual board behind a pseudo-terminal: mpremote and pyserial see it like a USB board.

The supervisor owns a pty pair and one MicroPython unix-port interpreter at a time, running
``firmware/host/vboard.py`` (the board's "ROM": filesystem, boot.py/main.py, friendly and raw
REPL, raw-paste). It copies bytes between the pty and the interpreter's pipes and is the hardware
the interpreter cannot be:

- **Resets.** A soft reset (Ctrl-D at a REPL), ``machine.reset()``, a watchdog expiry and a power
  cycle each end the interpreter; the next boot starts at once and the port stays. Input the host
  sent before a hard reset, watchdog or power cycle is discarded, as USB re-enumeration does;
  input sent across a soft reset is kept.
- **Ctrl-C.** The unix port takes Ctrl-C as SIGINT. The interpreter announces in band when a
  program runs (and when ``micropython.kbd_intr`` turns Ctrl-C into data); only then does a 0x03
  from the host become one SIGINT, and the input after it waits until the interrupt was taken,
  so the REPL, not the dying program, reads what mpremote sends next.
- **Host powers**: power cycle, Wi-Fi down/up, sensor faults and a full flash, through the host
  fakes' control file (``set_control``); everything else goes through the firmware's console.

Layout of a board's directory (compatible with ``VirtualNode``)::

    <dir>/fs/             the board's filesystem, mounted as "/" (blank at first)
    <dir>/control.json    steers the host fakes: wifi, dht, flash ("full"), sensor values, pins
    <dir>/events.jsonl    boots, exits, resets, watchdog expiries, power cycles, pin changes
    <dir>/console.log     everything the board wrote to its console
    <dir>/wdt             rewritten by the fake ``machine.WDT`` on every feed
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import logging
import os
import select
import signal
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.virtual.node import (
    BOARDS,
    BoardFiles,
    ResetCause,
    cause_number,
    find_micropython,
    firmware_dir,
)

__all__ = ["BoardMode", "VirtualBoard", "main"]

log = logging.getLogger("roost.virtual.board")

MAGIC = b"\x1b\x00RB"
"""Prefix of the interpreter's in-band messages to the supervisor (never reach the host)."""

EXIT_HARD = 42
EXIT_SOFT_FRIENDLY = 43
EXIT_SOFT_RAW = 44


_HOLD_S = 1.5  # input after a Ctrl-C waits at most this long for the interrupt to be taken
_TO_CHILD_MAX = 65536  # host input queued for the interpreter before the pty pushes back
_TAIL_FLUSH_S = 0.05


class BoardMode(enum.Enum):
    """Where the next boot starts: a power-on runs boot.py and main.py (friendly); a soft reset
    from the raw REPL runs boot.py only and returns to the raw REPL, as on a board."""

    FRIENDLY = "friendly"
    RAW = "raw"


class VirtualBoard(BoardFiles):
    """One virtual board: ``start()``, then use ``port`` like ``/dev/ttyACM0``.

    ``link`` is an optional stable path (a symlink to the pty). The board starts blank unless its
    ``fs`` directory already holds files; ``heapsize`` is the interpreter's heap (a Pico W has
    about 190 KB free after boot).
    """

    def __init__(
        self,
        directory: Path,
        *,
        board: str = "pico_w",
        unique_id: str | None = None,
        heapsize: str = "192k",
        link: Path | None = None,
        micropython: str | None = None,
        control: Mapping[str, Any] | None = None,
        chip: str | None = None,
        flash_kb: int | None = None,
    ) -> None:
        super().__init__(directory, board, control, chip)
        self.flash_kb = flash_kb or self.port_spec.flash_kb
        self.unique_id = unique_id
        self.heapsize = heapsize
        self.link = link
        self.micropython = micropython or find_micropython()
        self.firmware = firmware_dir()
        self.port = ""
        self.boots = 0
        self._lock = threading.Lock()
        self._booted = threading.Condition(self._lock)
        self._requests: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._master = -1
        self._slave = -1
        self._wake_r = -1
        self._wake_w = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._cause = ResetCause.PWRON
        self._cause_n = cause_number(self.port_spec, ResetCause.PWRON, 0)
        self._mode = BoardMode.FRIENDLY
        self._kill_cause: ResetCause | None = None
        self._respawn_at = 0.0
        self._quick_exits = 0
        self._started_at = 0.0
        self._powered = True
        self._to_child = bytearray()
        self._hold = bytearray()
        self._holding_until = 0.0
        self._intr = False
        self._tail = b""
        self._tail_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Create the pty, boot the board (a power-on) and return once it runs."""
        if self._thread is not None:
            raise RuntimeError("virtual board already started")
        self.fs.mkdir(parents=True, exist_ok=True)
        self._write_control()
        self._master, self._slave = os.openpty()
        # Raw until a client configures it: with the default echo the board would read its
        # own output back as input.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.port)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"vboard:{self.directory.name}", daemon=True
        )
        self._thread.start()
        self.wait_boot(1, timeout=10)

    def stop(self) -> None:
        """Remove the board for good: the interpreter is killed and the pty closed."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join(10)
        self._thread = None
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = self._wake_r = self._wake_w = -1
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def __enter__(self) -> VirtualBoard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def wait_boot(self, count: int, timeout: float = 20.0) -> None:
        """Wait until the board has booted ``count`` times in all (soft resets count too)."""
        with self._booted:
            if not self._booted.wait_for(lambda: self.boots >= count, timeout):
                raise TimeoutError(f"board booted {self.boots} times, expected {count}")

    # -- host powers -------------------------------------------------------------------------
    def power_cycle(self, off_s: float = 0.0) -> None:
        """Cut the power, wait ``off_s``, restore it; returns once the board booted again."""
        booted = self.boots
        self._call(lambda: self._power(False))
        if off_s:
            time.sleep(off_s)
        self._call(lambda: self._power(True))
        self.wait_boot(booted + 1)

    def set_control(self, **changes: Any) -> None:
        """Change what the host fakes do, e.g. ``wifi=False``, ``dht="fail"``, ``flash="full"``."""
        with self._lock:
            self._control.update(changes)
            self._write_control()
        self._event("control", **changes)

    def wifi(self, up: bool) -> None:
        """The access point goes away (or comes back)."""
        self.set_control(wifi=up)

    def sensor_fault(self, mode: str = "fail") -> None:
        """The DHT22 fails (``"fail"``: times out; ``"hang"``; ``"ok"``: works again)."""
        self.set_control(dht=mode)

    def flash_full(self, full: bool = True) -> None:
        """Every write to the board's filesystem fails with ENOSPC (or works again)."""
        self.set_control(flash="full" if full else "ok")

    # -- internals: called from other threads ------------------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        with self._lock:
            self._requests.append(run)
        self._wake()
        if not done.wait(10):
            raise TimeoutError("virtual board supervisor did not answer")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- internals: the supervisor thread ----------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        except Exception:
            log.exception("%s: supervisor failed", self.directory.name)
        finally:
            self._kill(ResetCause.PWRON)
            self._reap()

    def _step(self) -> None:
        now = time.monotonic()
        proc = self._proc
        if proc is None and self._powered and now >= self._respawn_at:
            self._spawn()
            proc = self._proc
        rlist = [self._wake_r]
        wlist = []
        if len(self._to_child) < _TO_CHILD_MAX:
            rlist.append(self._master)
        if proc is not None and proc.stdout is not None:
            rlist.append(proc.stdout.fileno())
            if self._to_child and proc.stdin is not None:
                wlist.append(proc.stdin.fileno())
        r, w, _ = select.select(rlist, wlist, [], 0.1)
        if self._wake_r in r:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
            with self._lock:
                requests, self._requests = self._requests, []
            for fn in requests:
                fn()
        if self._master in r:
            self._read_host()
        if proc is not None and proc is self._proc:
            if proc.stdin is not None and proc.stdin.fileno() in w:
                self._write_child(proc)
            if proc.stdout is not None and proc.stdout.fileno() in r:
                self._read_child(proc)
        now = time.monotonic()
        if self._hold and self._holding_until and now > self._holding_until:
            self._release()  # the program swallowed the interrupt: give it the input
        if self._tail and now - self._tail_at > _TAIL_FLUSH_S:
            tail, self._tail = self._tail, b""
            self._to_host(tail)
        self._check_watchdog()

    def _spawn(self) -> None:
        fw = self.firmware
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "MICROPY"))}
        env.update(
            MICROPYPATH=os.pathsep.join([str(fw / "host"), ".frozen"]),
            ROOST_BOARD_FS=str(self.fs.resolve()),
            ROOST_BOARD_MODE=self._mode.value,
            ROOST_BOARD_NAME=self.board,
            ROOST_BOARD_MACHINE=self.port_spec.machine + " (virtual)",
            ROOST_FLASH_KB=str(self.flash_kb),
            ROOST_PORT=self.port_spec.to_json(),
            ROOST_CONTROL=str(self.control_path.resolve()),
            ROOST_EVENTS=str(self.events_path.resolve()),
            ROOST_WDT_FILE=str(self.wdt_path.resolve()),
            ROOST_RESET_CAUSE=str(self._cause_n),
        )
        if self.unique_id:
            env["ROOST_UNIQUE_ID"] = self.unique_id
        if self._cause is not ResetCause.SOFT:
            # a hard reset or power-on stops the watchdog; a soft reset (and Ctrl-C) does not, on
            # either port, so its heartbeat file stays and keeps ageing across the new boot
            with contextlib.suppress(FileNotFoundError):
                self.wdt_path.unlink()
        proc = subprocess.Popen(
            [self.micropython, "-X", f"heapsize={self.heapsize}", str(fw / "host" / "vboard.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.fs,
            env=env,
            # its own session: a Ctrl-C at the supervisor's terminal is not a Ctrl-C to the board
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        self._proc = proc
        self._intr = False
        self._started_at = time.monotonic()
        self._event(
            "boot",
            n=self.boots + 1,
            cause=self._cause.value,
            reset_cause=self._cause_n,
            mode=self._mode.value,
            pid=proc.pid,
        )
        with self._booted:
            self.boots += 1
            self._booted.notify_all()

    def _read_host(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return
        if self._proc is None and not self._powered:
            return  # nobody home: bytes to a board without power are lost
        self._from_host(data)

    def _from_host(self, data: bytes) -> None:
        if self._holding_until:
            self._hold += data
            return
        i = data.find(3)
        if i >= 0 and self._intr and self._proc is not None:
            self._to_child += data[:i]
            self._hold += data[i + 1 :]
            self._holding_until = time.monotonic() + _HOLD_S
            self._intr = False
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGINT)
            return
        self._to_child += data

    def _release(self) -> None:
        data, self._hold = bytes(self._hold), bytearray()
        self._holding_until = 0.0
        if data:
            self._from_host(data)

    def _write_child(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        try:
            n = os.write(proc.stdin.fileno(), self._to_child)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            self._to_child.clear()
            return
        del self._to_child[:n]

    def _read_child(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:
            data = os.read(proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if data:
            self._from_device(data)
            return
        self._exited(proc)

    def _from_device(self, data: bytes) -> None:
        buf = self._tail + data
        self._tail = b""
        out = bytearray()
        i = 0
        while True:
            j = buf.find(MAGIC, i)
            if j < 0 or j + len(MAGIC) >= len(buf):
                break
            out += buf[i:j]
            self._message(buf[j + len(MAGIC)])
            i = j + len(MAGIC) + 1
        rest = buf[i:]
        # keep what could be the start of a message until the next output (or a short pause)
        keep = 0
        for k in range(min(len(rest), len(MAGIC)), 0, -1):
            if MAGIC.startswith(rest[-k:]):
                keep = k
                break
        out += rest[: len(rest) - keep]
        if keep:
            self._tail = rest[len(rest) - keep :]
            self._tail_at = time.monotonic()
        self._to_host(bytes(out))

    def _message(self, code: int) -> None:
        if code == ord("1"):
            self._intr = True
        elif code == ord("0"):
            self._intr = False
        elif code == ord("K"):
            self._intr = False
            if self._holding_until:
                self._release()

    def _to_host(self, data: bytes) -> None:
        if not data:
            return
        with self.console_log.open("ab") as f:
            f.write(data)
        # nobody reads the port and its buffer is full: a USB board drops output too
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        if self._tail:
            tail, self._tail = self._tail, b""
            self._to_host(tail)
        self._close_child(proc)
        self._proc = None
        if self._stopping:
            return
        killed, self._kill_cause = self._kill_cause, None
        soft = False
        if killed is not None:
            cause = killed
        elif code == EXIT_HARD:
            cause = ResetCause.MACHINE_RESET
        elif code in (EXIT_SOFT_FRIENDLY, EXIT_SOFT_RAW):
            soft = True
            cause = ResetCause.SOFT
        else:
            cause = ResetCause.HARD  # the interpreter died: a hard fault
        self._event("exit", code=code, cause=cause.value)
        self._cause = cause
        # rp2 keeps the last hard reset's cause across a soft reset, esp32 says SOFT_RESET
        self._cause_n = cause_number(self.port_spec, cause, self._cause_n)
        self._mode = BoardMode.RAW if code == EXIT_SOFT_RAW else BoardMode.FRIENDLY
        if soft:
            self._respawn_at = time.monotonic()
            self._quick_exits = 0
            return
        self._discard_input()
        quick = time.monotonic() - self._started_at < 2
        self._quick_exits = self._quick_exits + 1 if quick else 0
        self._respawn_at = time.monotonic() + min(0.05 * 2**self._quick_exits, 5.0)

    def _discard_input(self) -> None:
        dropped = len(self._to_child) + len(self._hold)
        self._to_child.clear()
        self._hold.clear()
        self._holding_until = 0.0
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:
                break
            if not data:
                break
            dropped += len(data)
        if dropped:
            self._event("input_discarded", bytes=dropped)

    def _close_child(self, proc: subprocess.Popen[bytes]) -> None:
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def _kill(self, cause: ResetCause) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill_cause = cause
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            self._close_child(proc)
            self._proc = None

    def _power(self, on: bool) -> None:
        if on:
            if not self._powered:
                self._powered = True
                self._cause = ResetCause.PWRON
                self._cause_n = cause_number(self.port_spec, ResetCause.PWRON, 0)
                self._mode = BoardMode.FRIENDLY
                self._respawn_at = time.monotonic()
                self._event("power", on=True)
            return
        self._event("power", on=False)
        self._powered = False
        proc = self._proc
        if proc is not None:
            self._kill(ResetCause.PWRON)
            proc.wait()
            self._kill_cause = None
            self._close_child(proc)
            self._proc = None
        self._discard_input()
        self._tail = b""

    def _check_watchdog(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            timeout_ms = int(self.wdt_path.read_text() or 0)
            age = time.time() - self.wdt_path.stat().st_mtime
        except (FileNotFoundError, ValueError):
            return  # no watchdog started yet, or caught mid-write
        if timeout_ms and age * 1000 > timeout_ms:
            log.info("%s: watchdog expired", self.directory.name)
            self._event("wdt_expired", timeout_ms=timeout_ms)
            self.wdt_path.unlink()
            self._kill(ResetCause.WDT)


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.virtual.board DIR``: run one virtual board until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.virtual.board", description=main.__doc__
    )
    parser.add_argument("directory", type=Path, help="the board's directory (fs/ is its flash)")
    parser.add_argument("--board", choices=BOARDS, default="pico_w")
    parser.add_argument("--chip", help="esp32 boards: esp32 (classic, default) or esp32s3")
    parser.add_argument("--link", type=Path, help="also reach the port at this path (a symlink)")
    parser.add_argument("--unique-id", help="hex of machine.unique_id()")
    args = parser.parse_args(argv)
    board = VirtualBoard(
        args.directory, board=args.board, link=args.link, unique_id=args.unique_id, chip=args.chip
    )
    board.start()
    print(f"virtual {args.board} on {board.port}" + (f" ({args.link})" if args.link else ""))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()


if __name__ == "__main__":
    main()

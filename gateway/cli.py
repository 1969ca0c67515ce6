"""The ``roost`` command line.

Exit codes: 0 success, 1 a runtime failure (the message says what to do), 2 bad configuration or
usage (the message names the setting and the fix).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.table import Table

from gateway.broker.managed import BrokerError
from gateway.config import ConfigError, Settings, load_settings, masked
from gateway.flash import command as flash_command
from gateway.nodeauth import register as register_node_commands
from gateway.rollup.commands import register as register_rollup_commands
from gateway.rollup.commands import rollup_stats, rollup_table
from gateway.store.reader import (
    StoreMissing,
    open_readonly,
    read_nodes,
    read_sinks,
    read_stats,
)

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

err = Console(stderr=True)


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]roost:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def settings_options(fn: F) -> F:
    """The flags every command that reads settings shares."""
    options = [
        click.option(
            "--config",
            "config",
            type=click.Path(path_type=Path),
            help="Settings file (default: ./roost.toml, then /etc/roost/roost.toml).",
        ),
        click.option("--data-dir", help="Where the store, Parquet and broker data live."),
        click.option(
            "--mqtt-url",
            help="Use this broker (mqtt:// or mqtts://) instead of starting a managed one.",
        ),
        click.option("--mqtt-port", type=int, help="The managed broker's port."),
        click.option("--http-host", help="Address the API and dashboard listen on."),
        click.option("--http-port", type=int, help="Port of the API and dashboard."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings(kw: dict[str, Any]) -> tuple[Settings, Path | None]:
    overrides = {
        "gateway": {"data_dir": kw.pop("data_dir", None), "log_level": kw.pop("log_level", None)},
        "mqtt": {"url": kw.pop("mqtt_url", None), "port": kw.pop("mqtt_port", None)},
        "http": {"host": kw.pop("http_host", None), "port": kw.pop("http_port", None)},
    }
    try:
        return load_settings(kw.pop("config", None), overrides=overrides)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", 2)
        raise AssertionError from None  # unreachable: _fail exits


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


@click.group()
@click.version_option(package_name="roost")
def main() -> None:
    """Roost: an edge gateway for MicroPython sensor nodes."""


@main.command()
@settings_options
def run(**kw: Any) -> None:
    """Run the gateway: managed broker (unless --mqtt-url), durable ingest, store."""
    settings, source = _settings(kw)
    _setup_logging(settings.gateway.log_level)
    from gateway.service import Gateway

    if source is not None:
        logging.getLogger("roost").info("settings from %s", source)
    gateway = Gateway(settings)
    try:
        code = _run_async(gateway.run())
    except BrokerError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"{exc}. Check gateway.data_dir ({settings.data_dir}) is writable.", 1)
    sys.exit(code)


@main.command()
@settings_options
@click.option(
    "--nodes",
    type=click.IntRange(0, 200),
    default=5,
    show_default=True,
    help="How many virtual nodes to run.",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.IntRange(1, 3600),
    default=5,
    show_default=True,
    help="Sampling interval of the virtual nodes, in seconds.",
)
@click.option(
    "--outage-every",
    "outage_every_s",
    type=float,
    default=90.0,
    show_default=True,
    help="Mean seconds between simulated Wi-Fi outages of a random node (0: none).",
)
def demo(nodes: int, interval_s: int, outage_every_s: float, **kw: Any) -> None:
    """Gateway + managed broker + virtual nodes (the real firmware) + dashboard, on this machine."""
    explicit_level = kw.get("log_level")
    settings, _ = _settings(kw)
    # The demo talks to a person: warnings and worse unless a level was asked for.
    _setup_logging(settings.gateway.log_level if explicit_level else "warning")
    from gateway.demo import run_demo
    from gateway.service import Gateway
    from gateway.virtual.node import find_micropython

    try:
        find_micropython()
    except Exception as exc:
        _fail(f"{exc}. Run ./setup.sh, which installs the MicroPython unix port.", 1)
    try:
        code = _run_async(
            run_demo(
                Gateway(settings), nodes=nodes, interval_s=interval_s, outage_every_s=outage_every_s
            )
        )
    except BrokerError as exc:
        _fail(str(exc), 1)
    sys.exit(code)


@main.group()
def config() -> None:
    """Inspect the settings."""


@config.command("show")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML-like text.")
def config_show(as_json: bool, **kw: Any) -> None:
    """Print the effective settings (file, environment, flags) with secrets masked."""
    settings, source = _settings(kw)
    data = masked(settings)
    data["gateway"]["data_dir"] = str(settings.data_dir)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"# effective settings (file: {source or 'none, defaults'})")
    for section, values in data.items():
        scalars = {k: v for k, v in values.items() if not isinstance(v, list)}
        click.echo(f"\n[{section}]")
        for key, value in scalars.items():
            click.echo(f"{key} = {json.dumps(value)}")
        for key, value in values.items():
            if isinstance(value, list):
                for item in value:
                    click.echo(f"\n[[{section}.{key}]]")
                    for k, v in item.items():
                        click.echo(f"{k} = {json.dumps(v)}")


def _store_command(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(**kw: Any) -> None:
        as_json = kw.pop("as_json")
        config_path = kw.pop("config")
        data_dir = kw.pop("data_dir")
        try:
            settings, _ = load_settings(config_path, overrides={"gateway": {"data_dir": data_dir}})
        except ConfigError as exc:
            _fail(f"configuration error: {exc}", 2)
        try:
            conn = open_readonly(settings.data_dir)
        except StoreMissing as exc:
            _fail(str(exc), 1)
        try:
            fn(conn=conn, data_dir=settings.data_dir, as_json=as_json)
        finally:
            conn.close()

    wrapper = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(wrapper)
    wrapper = click.option("--data-dir", help="The gateway's data dir.")(wrapper)
    return click.option(
        "--config", type=click.Path(path_type=Path), help="Settings file to take the data dir from."
    )(wrapper)


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@main.command()
@_store_command
def stats(conn: Any, data_dir: Path, as_json: bool) -> None:
    """Totals as stored: messages, reading rows, duplicates, quarantined, nodes, seq gaps."""
    s = read_stats(conn, data_dir)
    sinks = read_sinks(conn)
    if as_json:
        click.echo(
            json.dumps(
                {
                    **msgspec.to_builtins(s),
                    "sinks": [msgspec.to_builtins(k) for k in sinks],
                    "rollup": rollup_stats(conn, data_dir),
                }
            )
        )
        return
    table = Table(title=f"Roost store {data_dir}", show_header=False)
    labels = {
        "publishes": "MQTT messages",
        "messages": "reading messages",
        "stored": "stored messages",
        "duplicates": "duplicates",
        "rows": "reading rows",
        "quarantined": "quarantined",
        "statuses": "status messages",
        "command_acks": "command acks",
        "nodes": "nodes",
        "seq_gaps": "lost readings (seq gaps)",
        "db_bytes": "database bytes",
    }
    for key, label in labels.items():
        table.add_row(label, f"{getattr(s, key):,}")
    Console().print(table)
    figures = rollup_stats(conn, data_dir)
    if figures:
        Console().print(rollup_table(figures))
    if sinks:
        sync = Table(title="Upstream sync")
        for col in (
            "sink",
            "state",
            "delivered",
            "backlog",
            "oldest waiting",
            "dead letters",
            "last error",
        ):
            sync.add_column(col)
        for k in sinks:
            age = "-" if k.oldest_undelivered_ms is None else _when(k.oldest_undelivered_ms)
            sync.add_row(
                f"{k.name} ({k.type})",
                k.state or "-",
                f"{k.delivered:,}",
                f"{k.backlog:,}",
                age,
                f"{k.dead_letters:,}",
                k.last_error or "",
            )
        Console().print(sync)


@main.command()
@_store_command
def nodes(conn: Any, data_dir: Path, as_json: bool) -> None:
    """One line per node: state, last seen, firmware, messages and lost readings."""
    rows = read_nodes(conn)
    if as_json:
        click.echo(json.dumps([msgspec.to_builtins(r) for r in rows]))
        return
    if not rows:
        click.echo("no nodes yet")
        return
    for r in rows:
        click.echo(
            f"{r.node_id:<20} {r.state or 'unknown':<9} last {_when(r.last_seen)}  "
            f"{r.board or '-'} fw {r.fw or '-'} boot {r.boot if r.boot is not None else '-'}  "
            f"ip {r.ip or '-'} rssi {r.rssi if r.rssi is not None else '-'}  "
            f"messages {r.messages:,} lost {r.lost:,}"
        )


# Commands whose logic lives in their own modules: `roost flash` (gateway/flash.py), Parquet
# rollup, export and verify (gateway/rollup), `roost nodes add` (gateway/nodeauth.py).
main.add_command(flash_command)
register_rollup_commands(main)
register_node_commands(main)

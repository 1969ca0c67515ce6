"""The rollup's commands: ``roost rollup``, ``roost export``, ``roost parquet verify``, and the
rollup and budget figures of ``roost stats``. Registered on the ``roost`` group by gateway.cli."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.config import ConfigError, Settings, load_settings
from gateway.rollup.budget import measure
from gateway.rollup.catalog import Rolled, get_state
from gateway.rollup.hours import label, parquet_root, parse_hour
from gateway.store.reader import StoreMissing, db_path, open_readonly

__all__ = ["register", "rollup_stats"]


def _fail(message: str, code: int) -> None:
    from gateway.cli import _fail as fail

    fail(message, code)


def _load(config: Path | None, data_dir: str | None) -> Settings:
    try:
        settings, _ = load_settings(config, overrides={"gateway": {"data_dir": data_dir}})
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", 2)
        raise AssertionError from None
    if not db_path(settings.data_dir).is_file():
        _fail(f"no Roost store at {db_path(settings.data_dir)}: pass the gateway's --data-dir", 1)
    return settings


_common = [
    click.option("--config", type=click.Path(path_type=Path), help="Settings file."),
    click.option("--data-dir", help="The gateway's data dir."),
]


def _options(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command("rollup")
@_options
@click.option("--hour", "hour_text", help="Roll this UTC hour (YYYY-MM-DDTHH), due or not.")
@click.option(
    "--all-pending", is_flag=True, help="Roll every closed hour not rolled yet (the default)."
)
def rollup_command(
    config: Path | None, data_dir: str | None, hour_text: str | None, all_pending: bool
) -> None:
    """Roll closed hours of readings into Parquet now (the gateway also does it hourly)."""
    if hour_text and all_pending:
        _fail("give --hour or --all-pending, not both", 2)
    hour: int | None = None
    if hour_text:
        try:
            hour = parse_hour(hour_text)
        except ValueError as exc:
            _fail(str(exc), 2)
    settings = _load(config, data_dir)
    from gateway.cli import _run_async
    from gateway.rollup.scheduler import Rollup, RollupFailed
    from gateway.store.writer import StoreWriter

    async def go() -> tuple[int, int, list[str]]:
        writer = StoreWriter(db_path(settings.data_dir), synchronous=settings.store.synchronous)
        await writer.open()
        try:
            with Progress(
                TextColumn("rolling"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            ) as bar:
                task = bar.add_task("", total=None)

                def progress(done: int, total: int, r: Rolled | None) -> None:
                    text = "" if r is None else f"{label(r.hour)}: {r.rows:,} rows"
                    bar.update(task, completed=done, total=total, description=text)

                result = await Rollup(settings, writer).run_once(
                    hour=hour, progress=progress, retention_too=hour is None
                )
        finally:
            await writer.close()
        return len(result.rolled), sum(r.rows for r in result.rolled), result.problems

    try:
        hours, rows, problems = _run_async(go())
    except RollupFailed as exc:
        _fail(f"rollup failed: {exc}. The hours stay pending; run it again.", 1)
        raise AssertionError from None
    for p in problems:
        click.echo(f"repaired: {p}", err=True)
    click.echo(f"rolled {hours} hours, {rows:,} rows")


@click.command("export")
@_options
@click.option("--start", required=True, help="From this UTC time (ISO 8601), inclusive.")
@click.option("--end", required=True, help="To this UTC time (ISO 8601), exclusive.")
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True
)
@click.option("--node", "nodes", multiple=True, help="Only this node id (repeatable).")
@click.option("--metric", "metrics", multiple=True, help="Only this metric (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def export_command(
    config: Path | None,
    data_dir: str | None,
    start: str,
    end: str,
    fmt: str,
    nodes: tuple[str, ...],
    metrics: tuple[str, ...],
    output: Path,
) -> None:
    """Export readings of a time range, hot (SQLite) and cold (Parquet) together."""

    def ms(text: str, name: str) -> int:
        try:
            d = datetime.fromisoformat(text)
        except ValueError:
            _fail(f"--{name}: {text!r} is not an ISO 8601 time (e.g. 2025-11-22T12:00)", 2)
            raise AssertionError from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        return int(d.timestamp() * 1000)

    lo, hi = ms(start, "start"), ms(end, "end")
    settings = _load(config, data_dir)
    from gateway.rollup.export import export

    conn = open_readonly(settings.data_dir)
    try:
        rows = export(conn, parquet_root(settings.data_dir), lo, hi, output, fmt, nodes, metrics)
    finally:
        conn.close()
    click.echo(f"exported {rows:,} rows to {output}")


@click.group("parquet")
def parquet_group() -> None:
    """The Parquet dataset."""


@parquet_group.command("verify")
@_options
def verify_command(config: Path | None, data_dir: str | None) -> None:
    """Check every catalogued hour: file there, checksum and row count match, readable."""
    settings = _load(config, data_dir)
    from gateway.rollup.verify import verify

    try:
        conn = open_readonly(settings.data_dir)
    except StoreMissing as exc:
        _fail(str(exc), 1)
        raise AssertionError from None
    try:
        report = verify(conn, parquet_root(settings.data_dir))
    finally:
        conn.close()
    for rel in report.unlisted:
        click.echo(f"not in the catalog (the next rollup records it): {rel}")
    for p in report.problems:
        click.echo(f"PROBLEM {p}")
    click.echo(
        f"{report.checked} hours, {report.rows:,} rows checked, {len(report.problems)} problems"
    )
    if report.problems:
        _fail(
            "the Parquet dataset has problems: `roost rollup` rolls damaged hours again "
            "from SQLite while their rows are hot",
            1,
        )


def register(group: click.Group) -> None:
    for cmd in (rollup_command, export_command, parquet_group):
        group.add_command(cmd)


def rollup_stats(conn: sqlite3.Connection, data_dir: Path) -> dict[str, Any]:
    """Rollup, retention and budget figures for ``roost stats``."""
    try:
        counters = dict(conn.execute("SELECT name, value FROM counters"))
        hours, last = conn.execute(
            "SELECT count(*), max(hour) FROM parquet_hours WHERE dropped_at IS NULL"
        ).fetchone()
        pending = int(conn.execute("SELECT count(*) FROM rollup_todo").fetchone()[0])
        paused_since = get_state(conn, "budget_paused_since")
        io_bytes, io_rows = get_state(conn, "io_write_bytes"), get_state(conn, "io_rows")
    except sqlite3.OperationalError:
        return {}
    usage = measure(conn, data_dir)
    try:
        settings, _ = load_settings(overrides={"gateway": {"data_dir": str(data_dir)}})
        over = usage.over(settings.budget)
    except ConfigError:
        over = None
    return {
        "parquet_hours": int(hours),
        "last_rolled_hour": label(last) if last is not None else None,
        "pending_hours": pending,
        "parquet_bytes": usage.parquet_bytes,
        "sqlite_used_bytes": usage.sqlite_bytes,
        "free_bytes": usage.free_bytes,
        "budget_paused": bool(paused_since),
        "budget_over": over,
        "budget_pauses": int(counters.get("budget_pauses", 0)),
        "budget_dropped_hours": int(counters.get("budget_dropped_hours", 0)),
        "retention_dropped_hours": int(counters.get("retention_dropped_hours", 0)),
        "retention_messages": int(counters.get("retention_messages", 0)),
        "out_of_window": int(counters.get("out_of_window", 0)),
        "rollup_failures": int(counters.get("rollup_failures", 0)),
        "bytes_written_per_reading": round(io_bytes / io_rows, 1) if io_rows else None,
    }


def rollup_table(figures: dict[str, Any]) -> Table:
    table = Table(title="Parquet rollup and disk budget", show_header=False)
    for key, value in figures.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        table.add_row(key.replace("_", " "), "-" if shown is None else str(shown))
    return table

"""The REST handlers under ``/api`` and ``/metrics`` (docs/api.md lists them with examples).

Handlers parse and check their parameters (errors name the parameter), run their reads on the
read pool, and return msgspec structs or dataclasses that Litestar encodes and documents.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from dataclasses import asdict
from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.exceptions import NotFoundException, ServiceUnavailableException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from gateway.api.auth import admin_guard, read_guard
from gateway.api.context import ApiContext, Ctx
from gateway.api.metrics import CONTENT_TYPE, Snapshot, render
from gateway.api.params import bad_parameter, now_ms, parse_duration, parse_names, parse_time
from gateway.api.query import (
    Page,
    ReadingsQuery,
    Series,
    SeriesQuery,
    auto_bucket,
    decode_cursor,
)
from gateway.api.views import (
    CommandView,
    NodeView,
    QuarantineView,
    read_commands,
    read_node_views,
    read_quarantine,
)
from gateway.firstboot import ERROR_FILE as FIRSTBOOT_ERROR
from gateway.rollup.budget import measure
from gateway.rollup.catalog import get_state
from gateway.store.reader import read_sinks, read_stats

__all__ = ["ROUTES"]

#: More buckets than this in one series is a mistake (and a lot of JSON).
MAX_BUCKETS = 100_000
DAY_MS = 86_400_000

Names = Annotated[
    list[str] | None,
    QueryParameter(description="Repeat or separate with commas; none means all", required=False),
]
Start = Annotated[
    str | None,
    QueryParameter(description="ISO 8601, epoch ms, or -<duration> before now (-1h); default -24h"),
]
End = Annotated[str | None, QueryParameter(description="Like start; default now")]
Hours = Annotated[int, QueryParameter(ge=1, le=24 * 90, description="Completeness window in hours")]


def firstboot_error(ctx: ApiContext) -> str | None:
    try:
        text = (ctx.data_dir / FIRSTBOOT_ERROR).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return text.strip()[:4000] or "the first-boot configuration was refused (no reason given)"


def budget_paused_since(conn: sqlite3.Connection) -> int | None:
    """When the disk budget paused ingest (epoch ms), as the rollup recorded it; else None."""
    try:
        return get_state(conn, "budget_paused_since") or None
    except sqlite3.OperationalError:  # a store older than the rollup's tables
        return None


def read_budget(conn: sqlite3.Connection, ctx: ApiContext) -> dict[str, Any]:
    """The disk budget as the rollup left it in the store: paused since when, and why."""
    since = budget_paused_since(conn)
    try:
        counters = dict(
            conn.execute(
                "SELECT name, value FROM counters "
                "WHERE name IN ('budget_pauses', 'budget_dropped_hours')"
            )
        )
    except sqlite3.OperationalError:
        counters = {}
    usage = measure(conn, ctx.data_dir)
    return {
        "paused": since is not None,
        "paused_since": since,
        "reason": usage.over(ctx.settings.budget),
        "data_bytes": usage.data_bytes,
        "max_bytes": ctx.settings.budget.max_bytes,
        "free_bytes": usage.free_bytes,
        "min_free_bytes": ctx.settings.budget.min_free_bytes,
        "pauses": int(counters.get("budget_pauses", 0)),
        "dropped_hours": int(counters.get("budget_dropped_hours", 0)),
    }


def _range(start: str | None, end: str | None, default_span: int = DAY_MS) -> tuple[int, int]:
    now = now_ms()
    t1 = parse_time("end", end, now, now)
    t0 = parse_time("start", start, t1 - default_span, now)
    if t1 <= t0:
        raise bad_parameter("end", "must be after start")
    return t0, t1


# -- health and stats ---------------------------------------------------------------------------


class Health(msgspec.Struct):
    status: str
    store_writable: bool
    broker_connected: bool
    detail: list[str]
    #: The boot partition's roost.toml was refused at first boot (the text is in /api/stats).
    firstboot_error: bool = False


@get("/api/health", tags=["gateway"], summary="Liveness and readiness")
async def health(ctx: Ctx) -> Response[Health]:
    """200 when the store takes writes and the broker session is up, else 503 with the reason."""
    detail = []
    store_ok = False
    if ctx.writer is None:
        detail.append("store: served read-only")
    else:
        try:
            async with asyncio.timeout(5):
                await ctx.writer.execute(lambda conn: conn.execute("SELECT 1").fetchone())
            store_ok = True
        except Exception as exc:
            detail.append(f"store: {exc!r}")
    broker_ok = ctx.ingest is not None and ctx.ingest.state.connected
    if not broker_ok:
        why = ctx.ingest.state.last_error if ctx.ingest is not None else "no ingest"
        detail.append(f"broker: not connected ({why or 'connecting'})")
    ok = store_ok and broker_ok
    fb = (ctx.data_dir / FIRSTBOOT_ERROR).is_file()
    if fb:
        detail.append("firstboot: the boot partition's roost.toml was refused (see /api/stats)")
    return Response(
        Health("ok" if ok else "unavailable", store_ok, broker_ok, detail, fb),
        status_code=200 if ok else 503,
    )


@get("/api/stats", tags=["gateway"], guards=[read_guard], summary="Ingest, store, disk, sync")
async def stats(ctx: Ctx) -> dict[str, Any]:
    """Totals as stored, rates since start, disk, live clients and upstream sync state."""
    st, sinks, budget = await ctx.pool.run(
        lambda c: (read_stats(c, ctx.data_dir), read_sinks(c), read_budget(c, ctx))
    )
    disk = shutil.disk_usage(ctx.data_dir)
    msgs_s, rows_s = ctx.rates.rate(60)
    ing = ctx.ingest.state if ctx.ingest is not None else None
    writer = ctx.writer
    hub = ctx.hub
    return {
        "gateway": ctx.settings.gateway.name,
        "uptime_s": round(time.time() - ctx.started, 1),
        "ingest": {
            "connected": bool(ing and ing.connected),
            "since": ing.since if ing else None,
            "last_error": ing.last_error if ing else None,
            "connects": ing.connects if ing else 0,
            "rate_messages_s": round(msgs_s, 2),
            "rate_rows_s": round(rows_s, 2),
            "history_step_s": ctx.rates.step_s,
            "history": ctx.rates.history(),
        },
        "store": {
            **asdict(st),
            "queue_units": writer.queued if writer else 0,
            "transactions": writer.transactions if writer else 0,
            "commit_errors": writer.commit_errors if writer else 0,
        },
        "disk": {
            "data_dir": str(ctx.data_dir),
            "total_bytes": disk.total,
            "free_bytes": disk.free,
            "store_bytes": st.db_bytes,
        },
        "live": {
            "clients": len(hub.clients),
            "connects": hub.connects,
            "frames_queued": hub.frames_queued,
            "frames_dropped": hub.frames_dropped,
            "slow_disconnects": hub.slow_disconnects,
            "policy": hub.policy,
        },
        "budget": budget,
        "firstboot_error": firstboot_error(ctx),
        "sinks": [asdict(s) for s in sinks],
        "cold": {
            "reads": ctx.cold.reads,
            "errors": ctx.cold.errors,
            "seconds": round(ctx.cold.seconds, 3),
            "last_error": ctx.cold.last_error,
        },
    }


@get("/metrics", tags=["gateway"], guards=[read_guard], summary="Prometheus metrics")
async def metrics(ctx: Ctx) -> Response[bytes]:
    st, sinks, paused = await ctx.pool.run(
        lambda c: (read_stats(c, ctx.data_dir), read_sinks(c), budget_paused_since(c) is not None)
    )
    ing, writer, hub = ctx.ingest, ctx.writer, ctx.hub
    snap = Snapshot(
        stats=st,
        sinks=sinks,
        broker_connected=bool(ing and ing.state.connected),
        broker_connects=ing.state.connects if ing else 0,
        publishes_seen=ing.state.publishes if ing else 0,
        writer_queue=writer.queued if writer else 0,
        writer_transactions=writer.transactions if writer else 0,
        writer_commit_errors=writer.commit_errors if writer else 0,
        writer_isolated=writer.isolated if writer else 0,
        poison_quarantined=ing.poison.quarantined if ing else 0,
        marks_sent=ing.marks.sent if ing else 0,
        ws_clients=len(hub.clients),
        ws_connects=hub.connects,
        ws_frames_queued=hub.frames_queued,
        ws_frames_dropped=hub.frames_dropped,
        ws_slow_disconnects=hub.slow_disconnects,
        ingest_rate=ctx.rates.rate(60)[0],
        disk_free_bytes=shutil.disk_usage(ctx.data_dir).free,
        budget_paused=paused,
        cold_reads=ctx.cold.reads,
        cold_read_errors=ctx.cold.errors,
    )
    return Response(render(snap), media_type=CONTENT_TYPE)


# -- nodes and commands -------------------------------------------------------------------------


@get("/api/nodes", tags=["nodes"], guards=[read_guard], summary="Every node")
async def nodes(ctx: Ctx, hours: Hours = 24) -> list[NodeView]:
    """Registry, status, latest values and completeness over the last ``hours``."""
    stale = ctx.settings.api.stale_after_s * 1000
    return await ctx.pool.run(lambda c: read_node_views(c, now_ms(), stale, hours))


@get("/api/nodes/{node_id:str}", tags=["nodes"], guards=[read_guard], summary="One node")
async def node(ctx: Ctx, node_id: FromPath[str], hours: Hours = 24) -> NodeView:
    stale = ctx.settings.api.stale_after_s * 1000
    found = await ctx.pool.run(lambda c: read_node_views(c, now_ms(), stale, hours, node_id))
    if not found:
        raise NotFoundException(detail=f"node_id: no node {node_id[:80]!r}")
    return found[0]


class SetCommand(msgspec.Struct, tag_field="op", tag="set", forbid_unknown_fields=True):
    """Change the node's sampling interval."""

    interval_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)]


class IdentifyCommand(msgspec.Struct, tag_field="op", tag="identify", forbid_unknown_fields=True):
    """Blink the node's LED so a person can find it."""


class RebootCommand(msgspec.Struct, tag_field="op", tag="reboot", forbid_unknown_fields=True):
    """Restart the node."""


Command = SetCommand | IdentifyCommand | RebootCommand


class CommandSent(msgspec.Struct):
    id: str
    node_id: str
    op: str
    sent_at: int


@post(
    "/api/nodes/{node_id:str}/commands",
    tags=["nodes"],
    guards=[admin_guard],
    status_code=HTTP_202_ACCEPTED,
    summary="Send a command (admin)",
    security=[{"bearer": []}],
)
async def send_command(ctx: Ctx, node_id: FromPath[str], data: JSONBody[Command]) -> CommandSent:
    """Publish on the node's cmd topic (QoS1); the node's ack shows in the command list."""
    known = await ctx.pool.run(
        lambda c: c.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
    )
    if known is None:
        raise NotFoundException(detail=f"node_id: no node {node_id[:80]!r}")
    body = msgspec.to_builtins(data)
    op = str(body["op"])
    if ctx.ingest is None or ctx.writer is None:
        raise ServiceUnavailableException(detail="this API serves a store read-only")
    cid = await ctx.ingest.send_command(node_id, body)
    if cid is None:
        raise ServiceUnavailableException(detail="broker not connected: command not sent")
    sent = now_ms()
    encoded = msgspec.json.encode(body).decode()
    # The ack may have been committed already: fill in our half of the row either way.
    await ctx.writer.execute(
        lambda conn: conn.execute(
            "INSERT INTO commands (id, node_id, op, body, sent_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET op = excluded.op, body = excluded.body, "
            "sent_at = excluded.sent_at",
            (cid, node_id, op, encoded, sent),
        )
    )
    return CommandSent(cid, node_id, op, sent)


@get("/api/nodes/{node_id:str}/commands", tags=["nodes"], guards=[read_guard], summary="Commands")
async def list_commands(
    ctx: Ctx, node_id: FromPath[str], limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50
) -> list[CommandView]:
    """The node's newest commands with their acknowledgements."""
    return await ctx.pool.run(lambda c: read_commands(c, node_id, limit))


# -- data ----------------------------------------------------------------------------------------


class SeriesResponse(msgspec.Struct):
    start: int
    end: int
    bucket_ms: int
    series: list[Series]


@get("/api/series", tags=["data"], guards=[read_guard], summary="Bucketed series")
async def series(
    ctx: Ctx,
    node: Names = None,
    metric: Names = None,
    start: Start = None,
    end: End = None,
    bucket: Annotated[
        str | None, QueryParameter(description="30s, 5m, 1h, 1d or ms; default: about `points`")
    ] = None,
    points: Annotated[int | None, QueryParameter(ge=10, le=10_000)] = None,
) -> SeriesResponse:
    """avg/min/max/count per bucket for every (node, metric) asked; buckets align to the epoch."""
    t0, t1 = _range(start, end)
    if bucket:
        b = parse_duration("bucket", bucket)
        if (t1 - t0) // b > MAX_BUCKETS:
            raise bad_parameter("bucket", f"too small for the range (more than {MAX_BUCKETS})")
    else:
        b = auto_bucket(t0, t1, points or ctx.settings.api.series_points)
    q = SeriesQuery(parse_names("node", node), parse_names("metric", metric), t0, t1, b)
    out = await ctx.pool.run(lambda c: ctx.source.series(c, q))
    return SeriesResponse(t0, t1, b, out)


@get("/api/readings", tags=["data"], guards=[read_guard], summary="Raw readings, paginated")
async def readings(
    ctx: Ctx,
    node: Names = None,
    metric: Names = None,
    start: Start = None,
    end: End = None,
    limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
    cursor: Annotated[
        str | None, QueryParameter(description="next_cursor of the previous page")
    ] = None,
) -> Page:
    """Readings ordered by sample time; pass ``next_cursor`` back to get the next page."""
    t0, t1 = _range(start, end)
    after = None
    if cursor:
        after = decode_cursor(cursor)
        if after is None:
            raise bad_parameter("cursor", "is not a cursor this API gave out")
    q = ReadingsQuery(
        parse_names("node", node), parse_names("metric", metric), t0, t1, limit, after
    )
    return await ctx.pool.run(lambda c: ctx.source.readings(c, q))


@get("/api/quarantine", tags=["gateway"], guards=[read_guard], summary="Bad inputs")
async def quarantine(
    ctx: Ctx, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
) -> list[QuarantineView]:
    """The newest quarantined inputs with the reason each was refused."""
    return await ctx.pool.run(lambda c: read_quarantine(c, limit))


ROUTES = [
    health,
    stats,
    metrics,
    nodes,
    node,
    send_command,
    list_commands,
    series,
    readings,
    quarantine,
]

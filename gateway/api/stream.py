"""The streamed endpoints: ``/ws/live`` (backfill, then every commit) and ``/api/export``.

WebSocket routes are not in the OpenAPI schema; docs/api.md documents the frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib.util
import io
import logging
import sqlite3
import struct
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
from litestar import WebSocket, get, websocket
from litestar.exceptions import HTTPException, WebSocketDisconnect
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from gateway.api.auth import read_guard
from gateway.api.context import Ctx
from gateway.api.live import Client
from gateway.api.params import bad_parameter, now_ms, parse_names
from gateway.api.query import Reading, ReadingsQuery, decode_cursor
from gateway.api.routes import End, Names, Start, _range

__all__ = ["ROUTES", "read_backfill"]

log = logging.getLogger("roost.api.export")

_encode = msgspec.json.Encoder().encode


def read_backfill(
    conn: sqlite3.Connection,
    nodes: tuple[str, ...],
    metrics: tuple[str, ...],
    limit: int,
    since_ms: int,
) -> list[dict[str, Any]]:
    """The newest ``limit`` messages sampled since ``since_ms``, oldest first, as the feed shows."""
    if limit <= 0:
        return []
    node_refs = dict(conn.execute("SELECT node_ref, node_id FROM nodes"))
    if nodes:
        node_refs = {r: n for r, n in node_refs.items() if n in nodes}
    if not node_refs:
        return []
    refs = ",".join(str(int(r)) for r in node_refs)
    rows = conn.execute(
        "SELECT id, node_ref, boot, seq, ts, received, flags FROM messages "
        f"WHERE node_ref IN ({refs}) AND ts >= ? ORDER BY id DESC LIMIT ?",
        (since_ms, limit),
    ).fetchall()
    if not rows:
        return []
    ids = ",".join(str(r[0]) for r in rows)
    values: dict[int, dict[str, float]] = {}
    for mid, name, value in conn.execute(
        "SELECT r.message_id, k.name, r.value FROM readings r JOIN metrics k USING (metric_ref) "
        f"WHERE r.message_id IN ({ids})"
    ):
        if not metrics or name in metrics:
            values.setdefault(mid, {})[name] = value
    out = []
    for mid, ref, boot, seq, ts, received, flags in reversed(rows):
        if mid in values:
            out.append(
                {
                    "id": mid,
                    "node": node_refs[ref],
                    "boot": boot,
                    "seq": seq,
                    "ts": ts,
                    "received": received,
                    "flags": flags,
                    "metrics": values[mid],
                }
            )
    return out


async def _receive_until_closed(socket: WebSocket[Any, Any, Any], client: Client) -> None:
    """Read (and ignore) what the client sends; when it goes away, end its feed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await socket.receive_data("text")
    client.kicked = True
    with contextlib.suppress(asyncio.QueueFull):
        client.queue.put_nowait(None)


@websocket("/ws/live", guards=[read_guard])
async def live(
    socket: WebSocket[Any, Any, Any],
    ctx: Ctx,
    node: Names = None,
    metric: Names = None,
    backfill: FromQuery[int | None] = None,
) -> None:
    """Backfill of recent readings, then every commit as it happens (see docs/api.md)."""
    nodes, metrics = parse_names("node", node), parse_names("metric", metric)
    api = ctx.settings.api
    limit = api.ws_backfill if backfill is None else max(0, min(backfill, api.ws_backfill))
    await socket.accept()
    # Subscribe before reading the backfill: nothing committed in between is missed, and live
    # frames the backfill already covers are skipped by id below.
    client = ctx.hub.connect(nodes, metrics)
    receiver = asyncio.create_task(_receive_until_closed(socket, client))
    try:
        since = now_ms() - api.ws_backfill_s * 1000
        data = await ctx.pool.run(lambda c: read_backfill(c, nodes, metrics, limit, since))
        covered = data[-1]["id"] if data else 0
        await socket.send_text(_encode({"type": "backfill", "data": data}).decode())
        while True:
            frame = await client.queue.get()
            if frame is None:
                break
            if frame.last_id <= covered:
                continue
            frames, messages = client.take_gap()
            if frames:
                gap = {"type": "gap", "dropped_frames": frames, "dropped_messages": messages}
                await socket.send_text(_encode(gap).decode())
            await socket.send_text(frame.data.decode())
        if client.kicked and not receiver.done():
            await socket.close(code=1008, reason="too slow: frames did not fit the queue")
        elif not receiver.done():
            await socket.close(code=1001, reason="gateway stopping")
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away mid-send
    finally:
        ctx.hub.disconnect(client)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver


# -- export ------------------------------------------------------------------------------------

_CSV_HEADER = ["time", "ts", "node_id", "metric", "value", "boot", "seq", "received", "flags"]
_PAGE = 5000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def _pages(ctx: Ctx, q: ReadingsQuery) -> AsyncIterator[list[Reading]]:
    """Keyset pages of ``q``, each one query on the read pool."""
    while True:
        page = await ctx.pool.run(partial(ctx.source.readings, q=q))
        if page.readings:
            yield page.readings
        if page.next_cursor is None:
            return
        q = ReadingsQuery(
            q.nodes, q.metrics, q.start, q.end, q.limit, decode_cursor(page.next_cursor)
        )


async def _csv(ctx: Ctx, q: ReadingsQuery) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(_CSV_HEADER)
    async for page in _pages(ctx, q):
        for r in page:
            out.writerow(
                [_iso(r.ts), r.ts, r.node, r.metric, repr(r.value), r.boot, r.seq, r.received,
                 r.flags]
            )  # fmt: skip
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


async def _parquet(ctx: Ctx, q: ReadingsQuery) -> AsyncIterator[bytes]:
    """The dataset's Parquet layout (docs/parquet.md), one row group per page, streamed.

    The pages are encoded by ``gateway.api.parquetenc`` in a process of its own, so pyarrow
    never lives in the gateway (its RSS budget); it exits when the export ends.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.api.parquetenc",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin = proc.stdin

    async def feed() -> None:
        try:
            async for page in _pages(ctx, q):
                body = msgspec.msgpack.encode(
                    {
                        "ts": [r.ts for r in page],
                        "node_id": [r.node for r in page],
                        "metric": [r.metric for r in page],
                        "value": [r.value for r in page],
                        "boot": [r.boot for r in page],
                        "seq": [r.seq for r in page],
                        "received": [r.received for r in page],
                        "flags": [r.flags for r in page],
                    }
                )
                stdin.write(struct.pack(">I", len(body)) + body)
                await stdin.drain()
        finally:
            stdin.close()

    feeder = asyncio.create_task(feed())
    try:
        while chunk := await proc.stdout.read(1 << 16):
            yield chunk
        await feeder
        if await proc.wait() != 0:
            why = (await proc.stderr.read()).decode("utf-8", "replace").strip()
            # The status line has gone out with the first bytes: the body ends without
            # Parquet's footer, which every reader refuses; the log says why.
            log.error("parquet export failed: %s", why or f"status {proc.returncode}")
            raise RuntimeError(why)
    finally:
        feeder.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@get("/api/export", tags=["data"], guards=[read_guard], summary="Export readings (streamed)")
async def export(
    ctx: Ctx,
    node: Names = None,
    metric: Names = None,
    start: Start = None,
    end: End = None,
    format: Annotated[
        Literal["csv", "parquet"], QueryParameter(description="csv or parquet")
    ] = "csv",
) -> Stream:
    """Raw readings of the range as CSV or Parquet, streamed page by page."""
    t0, t1 = _range(start, end)
    q = ReadingsQuery(parse_names("node", node), parse_names("metric", metric), t0, t1, _PAGE)
    stamp = datetime.fromtimestamp(t0 / 1000, UTC).strftime("%Y%m%dT%H%M")
    if format == "parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise HTTPException(
                status_code=501, detail="format: parquet export needs pyarrow installed"
            )
        body: AsyncIterator[bytes] = _parquet(ctx, q)
        media = "application/vnd.apache.parquet"
    elif format == "csv":
        body = _csv(ctx, q)
        media = "text/csv; charset=utf-8"
    else:  # pragma: no cover - Literal already checked
        raise bad_parameter("format", "csv or parquet")
    return Stream(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="roost-{stamp}.{format}"'},
    )


ROUTES = [live, export]

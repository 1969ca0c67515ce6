"""Hot SQLite and cold Parquet behind one ``Source``: what the API reads.

Per UTC hour of a query's range, from one read transaction's view of the catalog
(``parquet_hours``, docs/parquet.md):

- **Stats hours** (series whose bucket is a whole number of hours, hours wholly inside the
  range, rolled, file not dropped, with ``hour_stats`` rows): the hour's aggregates, plus the
  raw rows the file does not hold (late ones, ``id > max_id``, and ones quarantined for their
  sample time). Those are found without walking the hour: a rolled hour with later rows is back
  in ``rollup_todo`` once the rollup has scanned them, and the unscanned ones have
  ``id > rollup_state.scanned_id``.
- **Pruned hours** (retention deleted some of their hot rows), otherwise: the file's rows, read
  by the short-lived ``gateway.api.coldread`` process, plus SQLite's rows the file does not hold.
- **Every other hour**: SQLite's rows.

A row is *in the file* of its hour when the hour is catalogued, ``id <= max_id`` and its sample
time is inside the rollup's accepted window (``rollup.accept_*``): exactly what the rollup
writes. Results equal what ``SqliteSource`` computes from the raw rows while they are all hot
(count, min and max exactly; averages up to float rounding of the sums).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.api.cold import ColdChanged, ColdFile, ColdReader, ColdReadError
from gateway.api.query import (
    Key,
    Page,
    Reading,
    ReadingsQuery,
    Refs,
    Series,
    SeriesQuery,
    encode_cursor,
    hot_readings_sql,
    in_list,
    metric_filter,
    resolve_refs,
)

__all__ = ["HOUR_MS", "TieredSource"]

HOUR_MS = 3_600_000
#: How often a query starts again when a file changed under it (a re-roll or a drop).
_RETRIES = 3

#: The hot row is in its hour's Parquet file and that hour is read from the file.
_IN_PRUNED_FILE = """
    m.id <= coalesce((SELECT p.max_id FROM parquet_hours p
                      WHERE p.hour = m.ts - m.ts % 3600000 AND p.pruned
                        AND p.dropped_at IS NULL), -1)
    AND m.ts BETWEEN m.received - :past AND m.received + :future
"""

_Acc = dict[tuple[int, int, int], list[Any]]


@dataclass(frozen=True, slots=True)
class _Hour:
    hour: int
    path: str
    bytes: int
    max_id: int
    pruned: bool
    has_stats: bool


def _add(acc: _Acc, key: tuple[int, int, int], n: int, s: float, lo: float, hi: float) -> None:
    a = acc.get(key)
    if a is None:
        acc[key] = [n, s, lo, hi]
    else:
        a[0] += n
        a[1] += s
        if lo < a[2]:
            a[2] = lo
        if hi > a[3]:
            a[3] = hi


def _gaps(start: int, end: int, hours: Iterable[int]) -> list[tuple[int, int]]:
    """``[start, end)`` minus the (sorted) whole hours given."""
    out = []
    at = start
    for h in hours:
        if h > at:
            out.append((at, h))
        at = h + HOUR_MS
    if end > at:
        out.append((at, end))
    return out


class TieredSource:
    """Series and readings over hot and cold data (module docstring)."""

    def __init__(self, cold: ColdReader, past_ms: int, future_ms: int) -> None:
        self.cold = cold
        self.window = {"past": past_ms, "future": future_ms}

    # -- the catalog ---------------------------------------------------------------------------

    def _catalog(self, conn: sqlite3.Connection, start: int, end: int) -> dict[int, _Hour]:
        return {
            h: _Hour(h, path, size, max_id, bool(pruned), bool(has_stats))
            for h, path, size, max_id, pruned, has_stats in conn.execute(
                "SELECT p.hour, p.path, p.bytes, p.max_id, p.pruned, "
                "       EXISTS (SELECT 1 FROM hour_stats s WHERE s.hour = p.hour) "
                "FROM parquet_hours p WHERE p.dropped_at IS NULL AND p.hour > ? AND p.hour < ? "
                "ORDER BY p.hour",
                (start - HOUR_MS, end),
            )
        }

    def _retrying(self, fn: Any, *args: Any) -> Any:
        for _ in range(_RETRIES):
            try:
                return fn(*args)
            except ColdChanged:
                continue
        raise ColdReadError("the Parquet files kept changing while being read: try again")

    @staticmethod
    def _names(refs: Refs, q: SeriesQuery | ReadingsQuery) -> dict[str, list[str]]:
        return {
            "nodes": sorted(refs.nodes.values()) if q.nodes else [],
            "metrics": [] if refs.all_metrics else sorted(refs.metrics.values()),
        }

    # -- series --------------------------------------------------------------------------------

    def series(self, conn: sqlite3.Connection, q: SeriesQuery) -> list[Series]:
        refs = resolve_refs(conn, q)
        if refs is None:
            return []
        acc: _Acc = self._retrying(self._series, conn, refs, q)
        out: list[Series] = []
        current: Series | None = None
        for node_ref, metric_ref, k in sorted(acc):
            if current is None or (current.node, current.metric) != (
                refs.nodes[node_ref],
                refs.metrics[metric_ref],
            ):
                current = Series(refs.nodes[node_ref], refs.metrics[metric_ref])
                out.append(current)
            n, s, lo, hi = acc[node_ref, metric_ref, k]
            current.t.append(k * q.bucket_ms)
            current.avg.append(s / n)
            current.min.append(lo)
            current.max.append(hi)
            current.count.append(n)
        return out

    def _series(self, conn: sqlite3.Connection, refs: Refs, q: SeriesQuery) -> _Acc:
        acc: _Acc = {}
        conn.execute("BEGIN")
        try:
            cat = self._catalog(conn, q.start, q.end)
            stats: dict[int, int] = {}
            if q.bucket_ms % HOUR_MS == 0:
                stats = {
                    h: e.max_id
                    for h, e in cat.items()
                    if e.has_stats and h >= q.start and h + HOUR_MS <= q.end
                }
            cold = [e for h, e in cat.items() if e.pruned and h not in stats]
            if stats:
                self._add_stats(conn, refs, q.bucket_ms, stats, acc)
            for lo, hi in _gaps(q.start, q.end, sorted(stats)):
                pruned = any(e.hour < hi and e.hour + HOUR_MS > lo for e in cold)
                self._add_hot(conn, refs, q.bucket_ms, lo, hi, pruned, acc)
            if stats:
                self._add_late(conn, refs, q.bucket_ms, stats, acc)
        finally:
            conn.execute("COMMIT")
        if cold:
            req = {"op": "series", "start": q.start, "end": q.end, "bucket_ms": q.bucket_ms,
                   **self._names(refs, q)}  # fmt: skip
            files = [ColdFile(e.hour, e.path, e.bytes) for e in cold]
            for rows in self.cold.frames(req, files):
                for node_ref, metric_ref, k, n, s, lo, hi in rows:
                    if node_ref in refs.nodes and metric_ref in refs.metrics:
                        _add(acc, (node_ref, metric_ref, k), n, s, lo, hi)
        return acc

    def _add_stats(
        self, conn: sqlite3.Connection, refs: Refs, b: int, stats: dict[int, int], acc: _Acc
    ) -> None:
        mf = "" if refs.all_metrics else f"AND metric_ref IN ({in_list(refs.metrics)})"
        for node_ref, metric_ref, hour, n, s, lo, hi in conn.execute(
            "SELECT node_ref, metric_ref, hour, n, sum, min, max FROM hour_stats "
            f"WHERE node_ref IN ({in_list(refs.nodes)}) {mf} AND hour >= ? AND hour <= ?",
            (min(stats), max(stats)),
        ):
            if hour in stats and metric_ref in refs.metrics:
                _add(acc, (node_ref, metric_ref, hour // b), n, s, lo, hi)

    def _add_hot(
        self,
        conn: sqlite3.Connection,
        refs: Refs,
        b: int,
        lo: int,
        hi: int,
        pruned: bool,
        acc: _Acc,
    ) -> None:
        skip = f"AND NOT ({_IN_PRUNED_FILE})" if pruned else ""
        for node_ref, metric_ref, k, n, s, vmin, vmax in conn.execute(
            f"""
            SELECT m.node_ref, r.metric_ref, m.ts / :b AS k,
                   count(*), sum(r.value), min(r.value), max(r.value)
            FROM messages m CROSS JOIN readings r ON r.message_id = m.id
            WHERE m.node_ref IN ({in_list(refs.nodes)}) AND m.ts >= :lo AND m.ts < :hi
              {metric_filter(refs)} {skip}
            GROUP BY m.node_ref, r.metric_ref, k
            """,
            {"b": b, "lo": lo, "hi": hi, **self.window},
        ):
            if metric_ref in refs.metrics:
                _add(acc, (node_ref, metric_ref, k), n, s, vmin, vmax)

    def _add_late(
        self, conn: sqlite3.Connection, refs: Refs, b: int, stats: dict[int, int], acc: _Acc
    ) -> None:
        """Raw rows of stats hours that their file (so ``hour_stats``) does not hold."""
        lo, hi = min(stats), max(stats) + HOUR_MS
        past, future = self.window["past"], self.window["future"]
        row = conn.execute("SELECT value FROM rollup_state WHERE name = 'scanned_id'").fetchone()
        scanned = int(row[0]) if row else 0
        todo = {
            int(h)
            for (h,) in conn.execute(
                "SELECT hour FROM rollup_todo WHERE hour >= ? AND hour < ?", (lo, hi)
            )
            if h in stats
        }
        cols = "m.id, m.ts, m.received, m.node_ref, r.metric_ref, r.value"
        base = (
            f"FROM messages m CROSS JOIN readings r ON r.message_id = m.id "
            f"WHERE m.node_ref IN ({in_list(refs.nodes)}) {metric_filter(refs)}"
        )
        found: dict[tuple[int, int], tuple[int, int, int, float]] = {}

        def keep(mid: int, ts: int, rcv: int, node: int, ref: int, value: float) -> None:
            h = ts - ts % HOUR_MS
            if h not in stats or ref not in refs.metrics:
                return
            if mid > stats[h] or not (rcv - past <= ts <= rcv + future):
                found[mid, ref] = (node, ref, ts, value)

        # Hours the rollup knows have rows newer than their file: walk those hours.
        for h in sorted(todo):
            for r in conn.execute(
                f"SELECT {cols} {base} AND m.ts >= ? AND m.ts < ?", (h, h + HOUR_MS)
            ):
                keep(*r)
        # Rows the rollup has not scanned yet: the newest ids (unary + keeps SQLite on the
        # primary key instead of walking the node's whole range by time).
        for r in conn.execute(
            f"SELECT {cols} FROM messages m CROSS JOIN readings r ON r.message_id = m.id "
            f"WHERE m.id > ? AND +m.node_ref IN ({in_list(refs.nodes)}) "
            f"AND +m.ts >= ? AND +m.ts < ? {metric_filter(refs)}",
            (scanned, lo, hi),
        ):
            if r[1] - r[1] % HOUR_MS not in todo:
                keep(*r)
        # Scanned rows outside the accepted window: never in a file.
        for r in conn.execute(
            f"SELECT {cols} FROM rollup_excluded x CROSS JOIN messages m ON m.id = x.message_id "
            f"CROSS JOIN readings r ON r.message_id = m.id "
            f"WHERE +m.node_ref IN ({in_list(refs.nodes)}) {metric_filter(refs)} "
            "AND m.ts >= ? AND m.ts < ?",
            (lo, hi),
        ):
            if r[1] - r[1] % HOUR_MS not in todo:
                keep(*r)
        for node, ref, ts, value in found.values():
            _add(acc, (node, ref, ts // b), 1, value, value, value)

    # -- readings ------------------------------------------------------------------------------

    def readings(self, conn: sqlite3.Connection, q: ReadingsQuery) -> Page:
        refs = resolve_refs(conn, q)
        if refs is None:
            return Page([], None)
        page: Page = self._retrying(self._readings, conn, refs, q)
        return page

    def _readings(self, conn: sqlite3.Connection, refs: Refs, q: ReadingsQuery) -> Page:
        conn.execute("BEGIN")
        try:
            cat = self._catalog(conn, q.start, q.end)
            since = q.start if q.after is None else max(q.start, q.after[0])
            cold = [e for e in cat.values() if e.pruned and e.hour + HOUR_MS > since]
            sql, args = hot_readings_sql(refs, q, f"AND NOT ({_IN_PRUNED_FILE})" if cold else "")
            hot = conn.execute(sql, {**args, **self.window} if cold else args).fetchall()
        finally:
            conn.execute("COMMIT")
        rows: list[tuple[Key, Reading]] = [
            (
                (ts, n, boot, seq, k),
                Reading(mid, refs.nodes[n], refs.metrics[k], ts, rcv, boot, seq, flags, v),
            )
            for mid, n, k, ts, rcv, boot, seq, flags, v in hot
            if k in refs.metrics
        ]
        if cold:
            req = {"op": "readings", "start": q.start, "end": q.end, "limit": q.limit,
                   "after": list(q.after) if q.after else None, **self._names(refs, q)}  # fmt: skip
            files = [ColdFile(e.hour, e.path, e.bytes) for e in cold]
            for frame in self.cold.frames(req, files):
                for ts, n, boot, seq, k, rcv, flags, v in frame:
                    if n in refs.nodes and k in refs.metrics:
                        rows.append(
                            (
                                (ts, n, boot, seq, k),
                                Reading(
                                    None, refs.nodes[n], refs.metrics[k], ts, rcv, boot, seq,
                                    flags, v,
                                ),
                            )
                        )  # fmt: skip
            rows.sort(key=lambda kr: kr[0])
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        cursor = encode_cursor(rows[-1][0]) if more and rows else None
        return Page([r for _, r in rows], cursor)

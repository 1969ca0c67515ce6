"""``/metrics`` in Prometheus text format (prometheus-client).

Totals come from the store's ``counters`` table (so they survive restarts, as Prometheus counters
may reset but need not), live figures from the running parts. Each scrape reads a snapshot on a
read thread, then a collector turns it into metric families in the app's own registry (never the
global one, so several apps in one process, as in tests, do not collide).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.store.reader import SinkRow, Stats

__all__ = ["CONTENT_TYPE", "Snapshot", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Snapshot:
    """Everything one scrape reports."""

    stats: Stats
    sinks: list[SinkRow] = field(default_factory=list)
    broker_connected: bool = False
    broker_connects: int = 0
    publishes_seen: int = 0
    writer_queue: int = 0
    writer_transactions: int = 0
    writer_commit_errors: int = 0
    writer_isolated: int = 0
    poison_quarantined: int = 0
    marks_sent: int = 0
    ws_clients: int = 0
    ws_connects: int = 0
    ws_frames_queued: int = 0
    ws_frames_dropped: int = 0
    ws_slow_disconnects: int = 0
    ingest_rate: float = 0.0
    disk_free_bytes: int = 0
    budget_paused: bool = False
    cold_reads: int = 0
    cold_read_errors: int = 0


_STORE_COUNTERS = {
    "publishes": "MQTT messages received and committed",
    "messages": "Reading messages committed, duplicates included",
    "stored": "Reading messages stored (first copies)",
    "duplicates": "Redelivered reading messages recognised and not stored again",
    "rows": "Reading rows (one per metric) stored",
    "quarantined": "Bad inputs quarantined",
    "statuses": "Node status messages",
    "command_acks": "Command acknowledgements from nodes",
}


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        for name, doc in _STORE_COUNTERS.items():
            yield CounterMetricFamily(f"roost_store_{name}", doc, value=getattr(s.stats, name))
        yield CounterMetricFamily(
            "roost_store_seq_gaps", "Readings lost (gaps in seq)", value=s.stats.seq_gaps
        )
        yield GaugeMetricFamily("roost_nodes", "Nodes known", value=s.stats.nodes)
        yield GaugeMetricFamily("roost_store_bytes", "Store size on disk", value=s.stats.db_bytes)
        yield GaugeMetricFamily(
            "roost_disk_free_bytes", "Free space where the data dir is", value=s.disk_free_bytes
        )
        yield GaugeMetricFamily(
            "roost_store_queue_units", "Units waiting for the store writer", value=s.writer_queue
        )
        yield CounterMetricFamily(
            "roost_store_transactions",
            "Store transactions since start",
            value=s.writer_transactions,
        )
        yield CounterMetricFamily(
            "roost_store_commit_errors", "Failed commits (retried)", value=s.writer_commit_errors
        )
        yield CounterMetricFamily(
            "roost_store_isolated",
            "Messages quarantined because committing them raised (not a store fault)",
            value=s.writer_isolated,
        )
        yield CounterMetricFamily(
            "roost_ingest_poison_quarantined",
            "Messages quarantined unprocessed by the poison breaker (ingest.poison_after)",
            value=s.poison_quarantined,
        )
        yield CounterMetricFamily(
            "roost_ingest_marks_sent",
            "Committed marks published to nodes (end-to-end acknowledgement)",
            value=s.marks_sent,
        )
        yield GaugeMetricFamily(
            "roost_ingest_connected", "1 when the ingest session is up", value=s.broker_connected
        )
        yield CounterMetricFamily(
            "roost_ingest_connects", "Ingest connections since start", value=s.broker_connects
        )
        yield CounterMetricFamily(
            "roost_ingest_publishes",
            "MQTT messages received since start",
            value=s.publishes_seen,
        )
        yield GaugeMetricFamily(
            "roost_ingest_rate_messages",
            "Reading messages stored per second, last minute",
            value=s.ingest_rate,
        )
        yield GaugeMetricFamily("roost_ws_clients", "Live WebSocket clients", value=s.ws_clients)
        yield CounterMetricFamily(
            "roost_ws_connects", "WebSocket clients since start", value=s.ws_connects
        )
        yield CounterMetricFamily(
            "roost_ws_frames_queued", "Live frames queued to clients", value=s.ws_frames_queued
        )
        yield CounterMetricFamily(
            "roost_ws_frames_dropped",
            "Live frames dropped because a client's queue was full",
            value=s.ws_frames_dropped,
        )
        yield CounterMetricFamily(
            "roost_ws_slow_disconnects",
            "Clients closed for being too slow (policy disconnect)",
            value=s.ws_slow_disconnects,
        )
        yield GaugeMetricFamily(
            "roost_budget_paused",
            "1 while the disk budget pauses ingest",
            value=1.0 if s.budget_paused else 0.0,
        )
        yield CounterMetricFamily(
            "roost_api_cold_reads",
            "API queries that read pruned hours from Parquet",
            value=s.cold_reads,
        )
        yield CounterMetricFamily(
            "roost_api_cold_read_errors",
            "Cold reads that failed (the log says why)",
            value=s.cold_read_errors,
        )
        backlog = GaugeMetricFamily(
            "roost_sink_backlog_messages", "Messages not yet delivered", labels=["sink"]
        )
        delivered = CounterMetricFamily(
            "roost_sink_delivered", "Messages delivered upstream", labels=["sink"]
        )
        dead = CounterMetricFamily(
            "roost_sink_dead_letters", "Messages the target rejected", labels=["sink"]
        )
        up = GaugeMetricFamily("roost_sink_online", "1 when the sink is online", labels=["sink"])
        for sink in s.sinks:
            backlog.add_metric([sink.name], sink.backlog)
            delivered.add_metric([sink.name], sink.delivered)
            dead.add_metric([sink.name], sink.dead_letters)
            up.add_metric([sink.name], 1.0 if sink.state == "online" else 0.0)
        yield from (backlog, delivered, dead, up)


def render(snap: Snapshot) -> bytes:
    """The text exposition of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)

"""The gateway process: broker, store writer and ingest as one supervised set of tasks.

Start-up order follows the data: the broker first (managed, or the external URL), then the store
(migrated), then ingest. Shutdown runs it backwards so nothing in flight is lost: stop reading,
let the writer commit and acknowledge what it holds, disconnect cleanly (the broker keeps the
session and queues for it), close the store, stop a managed broker last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import sdnotify
from gateway.broker.managed import ManagedBroker
from gateway.config import MqttTarget, Settings, parse_mqtt_url
from gateway.ingest.service import Ingest
from gateway.store.reader import db_path
from gateway.store.writer import StoreWriter
from gateway.sync.outbox import Outbox
from gateway.sync.runner import SinkRunner
from gateway.sync.sink import create as create_sink

if TYPE_CHECKING:
    from gateway.api.server import ApiServer
    from gateway.rollup.scheduler import Rollup

__all__ = ["Gateway", "GatewayInfo"]

log = logging.getLogger("roost")


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What a started gateway tells whoever started it."""

    broker_url: str
    managed_broker: bool
    data_dir: str


class Gateway:
    """One gateway process. ``await Gateway(settings).run()`` until ``stop()`` or a signal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: ManagedBroker | None = None
        self.writer: StoreWriter | None = None
        self.ingest: Ingest | None = None
        self.sinks: list[SinkRunner] = []
        self.api: ApiServer | None = None
        self._stop = asyncio.Event()
        self.exit_code = 0

    def stop(self) -> None:
        """Ask the gateway to shut down cleanly."""
        self._stop.set()

    async def run(
        self,
        *,
        on_ready: Callable[[GatewayInfo], None] | None = None,
        handle_signals: bool = True,
    ) -> int:
        s = self.settings
        data_dir = s.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)

        target: MqttTarget
        if s.managed_broker:
            self.broker = ManagedBroker(data_dir, port=s.mqtt.port, bind=s.mqtt.bind)
            await self.broker.start()
            target = MqttTarget(host="127.0.0.1", port=s.mqtt.port, tls=False)
            broker_url = f"mqtt://{s.mqtt.bind}:{s.mqtt.port} (managed)"
        else:
            target = parse_mqtt_url(s.mqtt.url)
            broker_url = f"{'mqtts' if target.tls else 'mqtt'}://{target.host}:{target.port}"

        self.writer = writer = StoreWriter(
            db_path(data_dir),
            batch_max_rows=s.store.batch_max_rows,
            batch_max_ms=s.store.batch_max_ms,
            synchronous=s.store.synchronous,
            quarantine_raw_bytes=s.ingest.quarantine_raw_bytes,
        )
        await writer.open()
        self.ingest = ingest = Ingest(s, writer, target)

        tasks: dict[str, asyncio.Task[None]] = {
            "store writer": asyncio.create_task(writer.run(), name="store-writer"),
            "ingest": asyncio.create_task(ingest.run(), name="ingest"),
        }
        # Upstream sync: one runner per enabled sink, each with its own outbox reader. Set up
        # before the API starts, so that whatever the API (or a test) sees once it answers is
        # the whole gateway.
        for sink_settings in s.sinks:
            if not sink_settings.enabled:
                continue
            outbox = Outbox(db_path(data_dir))
            await outbox.open()
            runner = SinkRunner(
                sink_settings,
                create_sink(sink_settings, s.gateway.name),
                writer,
                outbox,
                s.gateway.name,
            )
            self.sinks.append(runner)
            tasks[f"sink {sink_settings.name}"] = asyncio.create_task(
                runner.run(), name=f"sink-{sink_settings.name}"
            )
        # The API stack (Litestar, uvicorn) and the rollup take ~0.25 s to import: done in a
        # thread while ingest already runs, so a backlog queued at the broker starts draining
        # at once instead of after the imports (bench/ingest.py counts the start-up).
        api_server, rollup = await asyncio.to_thread(_import_late)
        # Hourly Parquet rollup, retention and the disk budget (gateway/rollup): pyarrow runs in
        # a short-lived worker process; the budget gates the writer's commits when over.
        self.rollup = rollup(s, writer)
        tasks["rollup"] = asyncio.create_task(self.rollup.run(), name="rollup")
        # The API last (its answering means the rest is set up), live WebSocket and dashboard
        # (gateway/api): uvicorn in this same loop. It only reads the store and listens to
        # commits, so a failure there never stops ingest.
        self.api = api_server(s, data_dir, writer, ingest)
        tasks["api"] = asyncio.create_task(self.api.serve(), name="api")
        if sdnotify.watchdog_interval() is not None:
            tasks["watchdog"] = asyncio.create_task(sdnotify.watchdog_loop(), name="watchdog")
        if self.broker is not None:
            tasks["broker supervisor"] = asyncio.create_task(
                self.broker.supervise(), name="broker-supervisor"
            )
        if handle_signals:
            # A gateway that owns its process tunes the collector; one embedded in another
            # program (the tests) leaves the host's alone.
            _tune_gc()
        stop_wait = asyncio.create_task(self._stop.wait(), name="stop")
        sdnotify.notify("READY=1")
        log.info("gateway %r running: broker %s, data in %s", s.gateway.name, broker_url, data_dir)
        if on_ready is not None:
            on_ready(GatewayInfo(broker_url, self.broker is not None, str(data_dir)))

        try:
            done, _ = await asyncio.wait(
                [stop_wait, *tasks.values()], return_when=asyncio.FIRST_COMPLETED
            )
            for name, task in tasks.items():
                if task in done:
                    exc = task.exception()
                    log.error("%s stopped unexpectedly: %r; shutting down", name, exc)
                    self.exit_code = 1
        finally:
            sdnotify.notify("STOPPING=1")
            await self._shutdown(tasks)
            stop_wait.cancel()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return self.exit_code

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        log.info("shutting down: committing what is in flight")
        ingest, writer = self.ingest, self.writer
        # The API first: live feeds end, in-flight requests get 3 s, then its read threads stop.
        if self.api is not None:
            await self.api.stop()
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(tasks["api"])
            except (TimeoutError, Exception):
                await _cancel(tasks.get("api"))
            self.api.close()
        if ingest is not None:
            await ingest.stop()
        await _cancel(tasks.get("ingest"))
        await _cancel(tasks.get("rollup"))  # kills a running rollup worker; its hours stay due
        # Sinks finish and record the batch in flight (a few seconds at most), then stop;
        # one cut off after the target acked it is resent next time (at least once).
        for runner in self.sinks:
            runner.stop()
        sink_tasks = [tasks[f"sink {r.settings.name}"] for r in self.sinks]
        if sink_tasks:
            await asyncio.wait(sink_tasks, timeout=5)
        for runner in self.sinks:
            await _cancel(tasks.get(f"sink {runner.settings.name}"))
            await runner.outbox.close()
        if writer is not None and not tasks["store writer"].done():
            try:
                async with asyncio.timeout(30):
                    await writer.drain()
            except TimeoutError:
                log.error("store did not drain within 30s; unacknowledged messages stay queued")
        await _cancel(tasks.get("store writer"))
        if ingest is not None:
            await ingest.disconnect()
        if writer is not None:
            if ingest is not None and self.exit_code == 0:
                # a clean stop: the next run need not suspect what the broker redelivers
                with contextlib.suppress(Exception):
                    await ingest.poison.end()
            await writer.close()
        await _cancel(tasks.get("watchdog"))
        await _cancel(tasks.get("broker supervisor"))
        if self.broker is not None:
            await self.broker.stop()
        log.info("gateway stopped")


def _tune_gc() -> None:
    """Keep the cycle collector off ingest's hot path once everything is imported.

    Ingest allocates several tracked objects (tuples, lists) per message, so with the default
    threshold of 700 a young collection ran every few dozen messages, and the older
    generations' passes walked every object the imports (Litestar, uvicorn) had created. The
    messages' own objects are freed by reference counting; almost none form cycles. Freezing
    what start-up built and collecting the young generation every 10,000 allocations instead
    took the drain of a queued backlog from 74-78k to 84-87k msgs/s at no measurable RSS
    (docs/performance.md, "Less Python per message").
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _import_late() -> tuple[type[ApiServer], type[Rollup]]:
    from gateway.api.server import ApiServer
    from gateway.rollup.scheduler import Rollup

    return ApiServer, Rollup


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

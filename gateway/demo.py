"""``roost demo``: the gateway with its managed broker, a fleet of virtual nodes, the dashboard.

Each virtual node is the real firmware running in the MicroPython unix port (``gateway.virtual``)
with host fakes giving plausible, slowly changing values. Now and then one node loses its Wi-Fi
for a while, so the demo also shows the flash buffer replaying after an outage. Ctrl-C stops the
nodes, then the gateway (which commits and acknowledges what is in flight), then the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path

from rich.console import Console

from gateway.service import Gateway, GatewayInfo
from gateway.store.reader import open_readonly, read_stats
from gateway.virtual.node import VirtualNode

__all__ = ["run_demo"]

log = logging.getLogger("roost.demo")

# Per node: board, extra sensors, and the climate of the room it stands in.
_ROOMS = [
    ("pico_w", [], 21.5, 45.0),
    ("esp32", [], 19.0, 55.0),
    ("pico_w", ["pir"], 23.0, 38.0),
    ("esp32", ["bme280"], 17.5, 60.0),
    ("pico_w", [], 25.0, 35.0),
    ("esp32", [], 20.5, 50.0),
]


def _node_config(i: int, port: int, interval_s: int) -> tuple[str, dict[str, object], str]:
    board, extra, _, _ = _ROOMS[i % len(_ROOMS)]
    sensors: list[dict[str, object]] = [{"type": "dht22"}, {"type": "chip_temp"}]
    for kind in extra:
        sensors.append({"type": kind})
    node_id = f"demo-{i + 1:02d}"
    config: dict[str, object] = {
        "node_id": node_id,
        "wifi": {"ssid": "roost-demo", "password": "virtual"},
        "gateway": {"host": "127.0.0.1", "port": port},
        "interval_s": interval_s,
        "sensors": sensors,
        "status_s": 60,
        "test_mode": True,
    }
    return node_id, config, board


async def _outages(nodes: list[VirtualNode], every_s: float, out: Console) -> None:
    """Take one node's Wi-Fi away for a while, now and then."""
    rng = random.Random()
    while True:
        await asyncio.sleep(rng.uniform(every_s * 0.5, every_s * 1.5))
        node = rng.choice(nodes)
        down = rng.uniform(10, 30)
        out.print(
            f"[yellow]demo:[/] {node.config['node_id']} loses Wi-Fi for {down:.0f}s "
            "(it buffers in flash and replays)"
        )
        node.set_control(wifi=False)
        await asyncio.sleep(down)
        node.set_control(wifi=True)


async def _report(data_dir: Path, out: Console, every_s: float = 15.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            conn = open_readonly(data_dir)
            try:
                s = read_stats(conn)
                online = conn.execute(
                    "SELECT count(*) FROM nodes WHERE state = 'online'"
                ).fetchone()[0]
            finally:
                conn.close()
            out.print(
                f"[dim]stored {s.stored:,} messages ({s.rows:,} readings) from "
                f"{online}/{s.nodes} nodes online; duplicates {s.duplicates:,}, "
                f"lost {s.seq_gaps:,}, quarantined {s.quarantined:,}[/]"
            )


async def run_demo(gateway: Gateway, *, nodes: int, interval_s: int, outage_every_s: float) -> int:
    """Run the gateway and ``nodes`` virtual nodes until Ctrl-C / SIGTERM."""
    out = Console(stderr=True)
    settings = gateway.settings
    ready: asyncio.Future[GatewayInfo] = asyncio.get_running_loop().create_future()
    gw_task = asyncio.create_task(gateway.run(on_ready=ready.set_result))
    while not ready.done():
        if gw_task.done():
            return gw_task.result()  # it could not start; it said why
        await asyncio.sleep(0.05)
    port = gateway.ingest.target.port if gateway.ingest else settings.mqtt.port
    fleet: list[VirtualNode] = []
    helpers: list[asyncio.Task[None]] = []
    try:
        root = settings.data_dir / "demo"
        with out.status(f"starting {nodes} virtual nodes…"):
            for i in range(nodes):
                node_id, config, board = _node_config(i, port, interval_s)
                _, _, temp, rh = _ROOMS[i % len(_ROOMS)]
                node = VirtualNode(
                    root / node_id,
                    config,
                    board=board,
                    control={"temp_c": temp, "rh_pct": rh, "wifi": True},
                )
                await node.start()
                fleet.append(node)
                out.print(f"  {node_id} ({board}) booted")
        http = settings.http
        host = "127.0.0.1" if http.host in ("0.0.0.0", "") else http.host
        out.print(
            f"\n[bold green]Roost demo running[/]: {nodes} virtual nodes -> broker "
            f"mqtt://127.0.0.1:{port} -> store {settings.data_dir}"
        )
        out.print(f"  dashboard  http://{host}:{http.port}/")
        out.print(f"  inspect    roost stats --data-dir {settings.data_dir}")
        out.print("  Ctrl-C to stop\n")
        if outage_every_s > 0 and fleet:
            helpers.append(asyncio.create_task(_outages(fleet, outage_every_s, out)))
        helpers.append(asyncio.create_task(_report(settings.data_dir, out)))
        await asyncio.shield(gw_task)
    except asyncio.CancelledError:
        gateway.stop()
    finally:
        for task in helpers:
            task.cancel()
        with out.status("stopping virtual nodes…"):
            await asyncio.gather(*(n.stop() for n in fleet), return_exceptions=True)
        if not gw_task.done():
            gateway.stop()
        code = await gw_task
    return code

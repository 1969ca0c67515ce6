# The node application: sampling on a fixed cadence into the flash ring, publishing the ring
# (backlog as JSON arrays, then live), commands with acks, the status birth, the watchdog and
# the boot-loop guard. main.py on each board calls run(board).
import asyncio
import gc
import time

import machine
from micropython import const

from roost import VERSION, sensors
from roost.config import load
from roost.link import Link
from roost.mqtt import MQTTClient
from roost.reading import batch, encode
from roost.ring import Ring
from roost.state import State
from roost.util import Clock, dumps, log

_HEALTHY_MS = const(30000)  # a boot that runs this long without crashing resets the guard
_EVENT_POLL_MS = const(100)
_MAX_CMDS = const(4)
OFFLINE = b'{"state":"offline"}'


class Node:
    def __init__(self, board, cfg, state):
        self.board = board
        self.cfg = cfg
        self.state = state
        nid = cfg["node_id"]
        if not nid:
            nid = "".join("%02x" % b for b in machine.unique_id())
        self.node_id = nid
        base = "roost/v1/" + nid + "/"
        self.t_readings = base + "readings"
        self.t_status = base + "status"
        self.t_cmd = base + "cmd"
        self.t_ack = base + "cmd/ack"
        self.boot = state.start_boot()
        self.safe = state.crashes() >= cfg["safe_after"]
        self.seq = 0
        self.clock = Clock()
        self.interval_ms = int(state.get("interval_s", cfg["interval_s"]) * 1000)
        r = cfg["ring"]
        self.ring = Ring("ring", r["capacity"], r["segment"], r["policy"] == "drop_oldest")
        self.batch = r["batch"]
        self.sensors = []
        self.sensor_errors = 0
        if not self.safe:
            specs = cfg["sensors"]
            if specs is None:
                specs = board.SENSORS
            for spec in specs:
                try:
                    self.sensors.append(sensors.make(spec, board))
                except OSError as e:
                    # a missing sensor must not stop the node; it shows up as a missing metric
                    log("sensor", spec.get("type"), "unavailable:", repr(e))
                    self.sensor_errors += 1
        self.led = machine.Pin(board.LED, machine.Pin.OUT)
        self.inject = {}
        m = cfg["mqtt"]
        self.client = MQTTClient(
            nid,
            cfg["gateway"]["host"],
            cfg["gateway"]["port"],
            m["keepalive_s"],
            m["user"],
            m["password"],
            (self.t_status, OFFLINE, 1, True),
            self._on_msg,
        )
        self.link = Link(cfg, self.client, self._on_connect)
        self._cmds = []
        self._cmd_ev = asyncio.Event()
        self._wake = asyncio.Event()
        self._recent_ids = []
        self._alive = time.ticks_ms()
        self._fatal = None
        self._fatal_ev = asyncio.Event()
        self._blink = None
        self._status_task = None
        self._tasks = []
        self.sent = 0
        log(
            "node",
            nid,
            "boot",
            self.boot,
            "safe" if self.safe else "normal",
            "ring",
            self.ring.count,
        )

    # --- status and identity -------------------------------------------------------------
    def status(self):
        gc.collect()
        return {
            "state": "safe_mode" if self.safe else "online",
            "fw": VERSION,
            "board": self.board.NAME,
            "boot": self.boot,
            "ip": self.link.ip(),
            "rssi": self.link.rssi(),
            "mem_free": gc.mem_free(),
            "dropped": self.ring.dropped,
            "interval_s": self.interval_ms / 1000,
            "ring": self.ring.count,
            "synced": self.clock.synced(),
        }

    async def publish_status(self):
        await self.client.publish(self.t_status, dumps(self.status()), 1, True)

    async def _on_connect(self):
        await self.client.subscribe(self.t_cmd, 1)
        await self.publish_status()
        self._wake.set()

    # --- sampling --------------------------------------------------------------------------
    def sample(self, only=None):
        """Take one reading from every sensor (or one event sensor) into the ring."""
        m = {}
        for s in self.sensors if only is None else (only,):
            try:
                m.update(s.read())
            except Exception as e:  # any driver error costs this sensor's metrics, nothing more
                self._sensor_failed(s, e)
        if self.inject:
            m.update(self.inject)
            self.inject = {}
        if not m:
            return None
        up = self.clock.uptime_ms()
        seq = self.seq
        self.ring.append(encode(self.boot, seq, self.clock.epoch_ms(up), up, m))
        self.seq = seq + 1
        self._wake.set()
        return seq

    def _sensor_failed(self, s, e):
        self.sensor_errors += 1
        n = getattr(s, "errors", 0) + 1
        s.errors = n
        # one log line on the first error and then on every 100th: a dead sensor sampled every
        # second must not flood the console
        if n % 100 == 1:
            log("sensor", type(s).__name__, "error", n, repr(e))

    async def sampler(self):
        events = [s for s in self.sensors if s.event]
        nxt = time.ticks_ms()
        beat = nxt
        while True:
            self._alive = time.ticks_ms()
            if time.ticks_diff(self._alive, nxt) >= 0:
                # fixed cadence: the next slot is counted from the previous one, not from now
                nxt = time.ticks_add(nxt, self.interval_ms)
                if time.ticks_diff(nxt, self._alive) < 0:
                    nxt = time.ticks_add(self._alive, self.interval_ms)
                if self.sensors:
                    self.sample()
                    beat = self._alive
                gc.collect()
            for s in events:
                if s.changed():
                    self.sample(s)
            if events and time.ticks_diff(self._alive, beat) > self.cfg["heartbeat_s"] * 1000:
                for s in events:
                    self.sample(s)
                beat = self._alive
            await asyncio.sleep_ms(_EVENT_POLL_MS)

    # --- publishing ------------------------------------------------------------------------
    async def publisher(self):
        ring = self.ring
        while True:
            await self.link.up.wait()
            if not ring.count:
                self._wake.clear()
                await self._wake.wait()
                continue
            recs = ring.peek(self.batch)
            try:
                await self.client.publish(self.t_readings, batch(recs), 1)
            except OSError:
                await asyncio.sleep_ms(200)
                continue
            ring.ack(len(recs))
            self.sent += len(recs)

    async def status_loop(self):
        while True:
            await asyncio.sleep(self.cfg["status_s"])
            if self.link.up.is_set():
                try:
                    await self.publish_status()
                except OSError:
                    pass

    # --- commands --------------------------------------------------------------------------
    def _on_msg(self, topic, payload, retained):
        # runs in the MQTT reader task: copy the payload out and let commands() act on it
        if len(self._cmds) < _MAX_CMDS:
            self._cmds.append(bytes(payload))
            self._cmd_ev.set()

    async def commands(self):
        import json

        while True:
            await self._cmd_ev.wait()
            self._cmd_ev.clear()
            while self._cmds:
                raw = self._cmds.pop(0)
                try:
                    cmd = json.loads(raw)
                    if not isinstance(cmd, dict):
                        raise ValueError
                except ValueError:
                    cmd = {"op": None}
                cid = cmd.get("id")
                if not isinstance(cid, str):
                    cid = ""
                if cid and cid in self._recent_ids:
                    continue  # a redelivered duplicate: executed and acknowledged already
                if cid:
                    self._recent_ids.append(cid)
                    if len(self._recent_ids) > 8:
                        self._recent_ids.pop(0)
                err = self.execute(cmd)
                ack = {"id": cid, "op": cmd.get("op"), "ok": err is None}
                if err is not None:
                    ack["error"] = err
                try:
                    await self.client.publish(self.t_ack, dumps(ack), 1)
                except OSError:
                    pass
                if cmd.get("op") == "reboot" and err is None:
                    await asyncio.sleep_ms(100)
                    self.reset()

    def execute(self, cmd):
        """Run one command; None when it succeeded, else the error text."""
        op = cmd.get("op")
        if op == "time":
            t = cmd.get("epoch_ms")
            if not isinstance(t, int) or t < 0:
                return "epoch_ms must be a non-negative integer"
            self.clock.set_epoch_ms(t)
            return None
        if op == "set":
            extra = [k for k in cmd if k not in ("id", "op", "interval_s")]
            if extra:
                return "unknown setting " + extra[0]
            v = cmd.get("interval_s")
            if not isinstance(v, (int, float)) or not 1 <= v <= 86400:
                return "interval_s must be a number from 1 to 86400"
            self.interval_ms = int(v * 1000)
            self.state.set("interval_s", v)
            return None
        if op == "identify":
            if self._blink is None:
                self._blink = asyncio.create_task(self._identify(cmd.get("s", 5)))
            return None
        if op == "reboot":
            return None
        if op == "status":
            self._status_task = asyncio.create_task(self.publish_status())
            return None
        return "unknown op %s" % op

    async def _identify(self, seconds):
        try:
            for _ in range(int(seconds * 4)):
                self.led.value(not self.led.value())
                await asyncio.sleep_ms(250)
        finally:
            self.led.value(0)
            self._blink = None

    def reset(self):
        """A deliberate reset: not a crash, so the boot-loop guard is cleared first."""
        log("reset requested")
        self.state.mark_healthy()
        self.client.close()  # no DISCONNECT: the broker publishes the offline will
        machine.reset()

    # --- supervision -----------------------------------------------------------------------
    def fail(self, exc):
        if self._fatal is None:
            self._fatal = exc
        self._fatal_ev.set()

    async def _guard(self, coro):
        try:
            await coro
        except Exception as e:  # any task failing is a crash of the node
            self.fail(e)

    async def watchdog(self):
        wdt = machine.WDT(timeout=self.cfg["wdt_ms"])
        healthy = False
        stale = self.interval_ms + 30000
        while True:
            now = time.ticks_ms()
            # fed only while the sampler is making progress: a stuck task means a reset
            if self.safe or time.ticks_diff(now, self._alive) < stale:
                wdt.feed()
            if not healthy and self.clock.uptime_ms() > _HEALTHY_MS:
                self.state.mark_healthy()
                healthy = True
            await asyncio.sleep_ms(500)

    async def main(self, extra=()):
        tasks = [
            self.link.run(),
            self.publisher(),
            self.commands(),
            self.watchdog(),
            self.status_loop(),
        ]
        if not self.safe:
            tasks.append(self.sampler())
        tasks.extend(extra)
        self._tasks = [asyncio.create_task(self._guard(c)) for c in tasks]
        await self._fatal_ev.wait()
        raise self._fatal


def run(board, config_path="config.json"):
    """Board entry point: build the node and run it forever; any crash ends in a reset."""
    try:
        cfg = load(config_path)
    except ValueError as e:
        # a broken config.json cannot be fixed by resetting: stay at the REPL for mpremote
        print("[roost] config error:", e)
        return
    try:
        node = Node(board, cfg, State())
        extra = ()
        if cfg["test_mode"]:
            from roost.console import Console

            extra = (Console(node).run(),)
        asyncio.run(node.main(extra))
    except Exception as e:  # log, then reset: the guard counts it
        import sys

        print("[roost] crash:")
        sys.print_exception(e)
        time.sleep_ms(1000)
        machine.reset()

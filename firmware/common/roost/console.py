# Console line protocol for test rigs, on the USB serial REPL (stdin/stdout), only in test mode.
# A request is a line "!roost <command> [args]"; the answer is exactly one line
# "roost: {json}" with "cmd" and "ok" (and "error" when ok is false). Everything else the
# firmware prints starts with "[roost]", so a rig can tell answers from logs.
#
#   status                  identity, link, ring and memory figures
#   inject <metric> <value> override <metric> in the next reading (one shot)
#   sample                  take a reading now; answers its seq
#   wifi down|up            simulated Wi-Fi outage (the link layer stays down until "up")
#   cmd <json>              run a gateway command locally, e.g. cmd {"op":"set","interval_s":2}
#   reboot | crash | hang   deliberate reset / unhandled error / stuck loop (watchdog test)
#   help
import asyncio
import gc
import json
import sys
import time

from roost import VERSION
from roost.util import dumps

HELP = "status inject sample wifi cmd reboot crash hang help"


def reply(obj):
    sys.stdout.write("roost: " + dumps(obj) + "\n")


class Console:
    def __init__(self, node):
        self.node = node

    async def run(self):
        reader = asyncio.StreamReader(sys.stdin)
        line = ""
        while True:
            # one character at a time: a board's stdin.readline() would block the event loop
            # until the newline arrives
            ch = await reader.read(1)
            if not ch:
                return  # stdin closed (virtual board without a console): nothing more to read
            if isinstance(ch, bytes):
                ch = ch.decode()
            if ch not in "\r\n":
                if len(line) < 256:
                    line += ch
                continue
            line, text = "", line.strip()
            if text.startswith("!roost"):
                await self.dispatch(text)

    async def dispatch(self, line):
        parts = line.split(None, 3)
        cmd = parts[1] if len(parts) > 1 else "help"
        try:
            out = self.handle(cmd, parts[2:])
        except (ValueError, TypeError, IndexError) as e:
            out = {"ok": False, "error": "bad arguments: %s" % e}
        out["cmd"] = cmd
        reply(out)
        if cmd in ("reboot", "crash", "hang") and out["ok"]:
            await asyncio.sleep_ms(50)
            self.act(cmd)

    def handle(self, cmd, args):
        n = self.node
        if cmd == "status":
            gc.collect()
            return {
                "ok": True,
                "node_id": n.node_id,
                "fw": VERSION,
                "board": n.board.NAME,
                "boot": n.boot,
                "seq": n.seq,
                "safe": n.safe,
                "wifi": n.link.wifi_ok(),
                "mqtt": n.link.up.is_set(),
                "ring": n.ring.count,
                "dropped": n.ring.dropped,
                "sent": n.sent,
                "mem_free": gc.mem_free(),
                "interval_s": n.interval_ms / 1000,
                "synced": n.clock.synced(),
                "sensor_errors": n.sensor_errors,
            }
        if cmd == "inject":
            v = float(args[1]) if "." in args[1] else int(args[1])
            n.inject[args[0]] = v
            return {"ok": True, "metric": args[0], "value": v}
        if cmd == "sample":
            seq = n.sample()
            return {"ok": seq is not None, "seq": seq}
        if cmd == "wifi":
            if args[0] not in ("up", "down"):
                raise ValueError("wifi up|down")
            n.link.forced_down = args[0] == "down"
            return {"ok": True, "wifi": args[0]}
        if cmd == "cmd":
            err = n.execute(json.loads(" ".join(args)))
            return {"ok": err is None, "error": err} if err else {"ok": True}
        if cmd in ("reboot", "crash", "hang"):
            return {"ok": True}
        if cmd == "help":
            return {"ok": True, "commands": HELP}
        return {"ok": False, "error": "unknown command"}

    def act(self, cmd):
        if cmd == "reboot":
            self.node.reset()
        elif cmd == "crash":
            self.node.fail(RuntimeError("crash requested on the console"))
        else:
            while True:  # blocks the event loop: the watchdog must reset the board
                time.sleep_ms(100)

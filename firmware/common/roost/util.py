# Small helpers shared by every module: logging, compact JSON, a non-wrapping uptime clock,
# and crash-safe JSON files (write a temporary file, then rename: atomic on LittleFS and FAT).
import json
import os
import time

DEBUG = False  # debug strings are never built unless this is switched on


def log(*args):
    print("[roost]", *args)


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(dumps(obj))
    os.rename(tmp, path)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Clock:
    """Uptime in ms that does not wrap (ticks_ms wraps after ~12 days on a board) and the
    node's epoch time once the gateway has sent it (an offset against uptime)."""

    def __init__(self):
        self._last = time.ticks_ms()
        self._up = 0
        self._sync_up = None
        self._sync_epoch = 0

    def uptime_ms(self):
        now = time.ticks_ms()
        self._up += time.ticks_diff(now, self._last)
        self._last = now
        return self._up

    def set_epoch_ms(self, epoch_ms):
        self._sync_up = self.uptime_ms()
        self._sync_epoch = int(epoch_ms)

    def synced(self):
        return self._sync_up is not None

    def epoch_ms(self, up=None):
        # None until the first time sync: readings then carry no "t".
        if self._sync_up is None:
            return None
        if up is None:
            up = self.uptime_ms()
        return self._sync_epoch + (up - self._sync_up)

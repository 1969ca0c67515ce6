# Shared state of the host fakes (MicroPython unix port only). The virtual-node supervisor
# steers them through a JSON control file named by ROOST_CONTROL, re-read when it changes:
#   {"wifi": true, "dht": "ok"|"fail"|"hang", "temp_c": 21.0, "rh_pct": 45.0,
#    "chip_temp_c": 30.0, "pins": {"16": 1}, "i2c": "ok"|"fail"|"absent"}
# Pin changes are appended to ROOST_EVENTS (JSON lines) so tests can see the LED blink.
import json
import os
import random
import time

_path = os.getenv("ROOST_CONTROL")
_stamp = None
_ctl = {}
_walks = {}
_port = None


def port():
    """The chip's port table entry (gateway/virtual/ports.py), passed as JSON in ROOST_PORT."""
    global _port
    if _port is None:
        raw = os.getenv("ROOST_PORT")
        if not raw:
            raise ImportError("ROOST_PORT is not set: run the fakes through gateway.virtual")
        _port = json.loads(raw)
    return _port


def ctl():
    global _stamp, _ctl
    if not _path:
        return _ctl
    try:
        st = os.stat(_path)
    except OSError:
        return _ctl
    stamp = (st[8], st[6])
    if stamp != _stamp:
        try:
            with open(_path) as f:
                _ctl = json.load(f)
            _stamp = stamp
        except (OSError, ValueError):
            pass  # being rewritten: keep the previous state
    return _ctl


def get(key, default=None):
    return ctl().get(key, default)


def walk(name, base, step, lo, hi):
    """A mean-reverting random walk around base: plausible, slowly changing sensor values."""
    v = _walks.get(name, base)
    v += (random.random() * 2 - 1) * step + (base - v) * 0.1
    v = min(max(v, lo), hi)
    _walks[name] = v
    return v


def event(kind, **kw):
    path = os.getenv("ROOST_EVENTS")
    if not path:
        return
    kw["ev"] = kind
    kw["t"] = time.time_ns() // 1000000
    with open(path, "a") as f:
        f.write(json.dumps(kw) + "\n")


def hang():
    event("hang")
    while True:
        time.sleep_ms(1000)

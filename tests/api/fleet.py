"""A small, realistic fleet's history for API, browser and benchmark tests."""

from __future__ import annotations

import json
import math
import time

ROOMS = {
    "kitchen": ("pico_w", 21.5, 48.0),
    "greenhouse": ("esp32", 27.0, 71.0),
    "cellar": ("pico_w", 12.5, 83.0),
}


def status(node: str, board: str, boot: int = 3) -> tuple[str, bytes]:
    body = {"state": "online", "fw": "1.2.0", "board": board, "boot": boot, "ip": "10.42.0.17",
            "rssi": -61, "mem_free": 81234, "dropped": 0}
    return f"roost/v1/{node}/status", json.dumps(body).encode()


def history(minutes: int = 60, step_s: int = 30, skip: int = 17) -> list[tuple[str, bytes]]:
    """Every room's readings over the last ``minutes``: a status, then timed reading messages.

    Seq ``skip`` of the cellar never arrives (a loss the completeness figures must show).
    """
    now = int(time.time() * 1000)
    items: list[tuple[str, bytes]] = []
    n = minutes * 60 // step_s
    for room, (board, temp, rh) in ROOMS.items():
        items.append(status(room, board))
        for s in range(n):
            if room == "cellar" and s == skip:
                continue
            t = now - (n - s) * step_s * 1000
            phase = s / n * 2 * math.pi
            body = {"b": 3, "s": s, "t": t, "u": s * step_s * 1000,
                    "m": {"temp_c": round(temp + 1.5 * math.sin(phase) + (s % 5) * 0.05, 2),
                          "rh_pct": round(rh - 4 * math.sin(phase), 1)}}
            items.append((f"roost/v1/{room}/readings", json.dumps(body).encode()))
    return items


def reading_now(node: str, seq: int, **metrics: float) -> tuple[str, bytes]:
    body = {"b": 3, "s": seq, "t": int(time.time() * 1000), "u": seq * 1000, "m": metrics}
    return f"roost/v1/{node}/readings", json.dumps(body).encode()

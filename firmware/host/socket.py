# Host fake of `socket`: the unix port's own sockets (the node's TCP traffic really goes over the
# host's loopback) with a board's name resolution in front of getaddrinfo():
#   - {"dns_delay_ms": N} blocks the calling thread N ms before answering, as a board waits for
#     its resolver: extmod/modlwip.c (rp2, MicroPython v1.24.0) polls lwIP until the answer or
#     its timeout, ports/esp32/modsocket.c asks mDNS first for "*.local" (seconds without a
#     responder). The esp32 port releases the GIL meanwhile, so other threads run; so does this
#     fake (time.sleep_ms in the unix port).
#   - {"dns": "fail"}: no answer, raised the ports' way: OSError(-2) on rp2 (lwIP's "not found"),
#     OSError(-202) on esp32 (lwIP's EAI_FAIL).
#   - {"dns_hosts": {"roost.local": "127.0.0.1"}}: names the board's resolver (or mDNS) knows
#     and the host does not; the rest go to the host's resolver.
# Every lookup is logged as a "dns" event, so tests can count them.
import time

import _hostctl
import usocket
from usocket import *  # noqa: F403


def getaddrinfo(host, port, *args):
    delay = int(_hostctl.get("dns_delay_ms", 0) or 0)
    _hostctl.event("dns", host=host, delay_ms=delay)
    if delay:
        time.sleep_ms(delay)
    if _hostctl.get("dns", "ok") == "fail":
        raise OSError(-2 if _hostctl.port()["port"] == "rp2" else -202)
    known = _hostctl.get("dns_hosts", None) or {}
    return usocket.getaddrinfo(known.get(host, host), port, *args)

# The link layer owns Wi-Fi and the broker connection: it (re)connects both with exponential
# backoff and jitter, and the rest of the firmware only waits on `up`. `forced_down` is the
# console's simulated Wi-Fi outage, which works on a real board too.
import asyncio
import random

import network

from roost.util import log

_WIFI_WAIT_MS = 15000


class Link:
    def __init__(self, cfg, client, on_connect):
        self.cfg = cfg
        self.client = client
        self.on_connect = on_connect
        self.wlan = network.WLAN(network.STA_IF)
        self.up = asyncio.Event()
        self.forced_down = False
        self.connects = 0

    def wifi_ok(self):
        return not self.forced_down and self.wlan.isconnected()

    def ip(self):
        try:
            return self.wlan.ifconfig()[0]
        except OSError:
            return None

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError, TypeError):
            return None

    async def _wifi(self):
        w = self.wlan
        if w.isconnected():
            return True
        w.active(True)
        wifi = self.cfg["wifi"]
        w.connect(wifi["ssid"], wifi["password"])
        for _ in range(_WIFI_WAIT_MS // 100):
            if w.isconnected():
                log("wifi up", self.ip())
                return True
            await asyncio.sleep_ms(100)
        w.disconnect()
        return False

    async def run(self):
        delay = 1
        cap = self.cfg["backoff_max_s"]
        while True:
            if self.forced_down:
                self.wlan.disconnect()
                while self.forced_down:
                    await asyncio.sleep_ms(200)
                continue
            try:
                if await self._wifi():
                    await self.client.connect()
                    await self.on_connect()
                    self.connects += 1
                    delay = 1
                    log("mqtt up")
                    self.up.set()
                    while self.client.isconnected() and self.wifi_ok():
                        await asyncio.sleep_ms(200)
                    log("link down")
            except OSError as e:
                log("link error", repr(e))
            self.up.clear()
            self.client.close()
            # full jitter on top of the exponential delay keeps a fleet from reconnecting in step
            await asyncio.sleep_ms(delay * 500 + random.getrandbits(10) * delay // 2)
            delay = min(delay * 2, cap)

# Host fake of `network`: a station interface that is up unless the control file says
# {"wifi": false}. The node's TCP traffic really goes over the host's loopback.
import _hostctl

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 3


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._want = False

    def active(self, flag=None):
        if flag is None:
            return self._active
        self._active = bool(flag)
        return None

    def connect(self, ssid=None, key=None, **kw):
        self._active = True
        self._want = True
        _hostctl.event("wifi_connect", ssid=ssid)

    def disconnect(self):
        self._want = False

    def isconnected(self):
        return self._active and self._want and bool(_hostctl.get("wifi", True))

    def status(self, param=None):
        if param == "rssi":
            return int(_hostctl.walk("rssi", -60, 2, -90, -30))
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

    def ifconfig(self, *args):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kw):
        if args and args[0] == "mac":
            return b"\x28\xcd\xc1\x00\x00\x01"
        return None

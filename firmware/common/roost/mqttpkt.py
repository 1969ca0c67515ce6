# MQTT 3.1.1 packet codec: pure functions that encode into a caller's preallocated buffer and
# decode from bytes/memoryviews, so the host tests can assert exact bytes.
from micropython import const

CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x82)  # type 8 with the reserved flags 0b0010
SUBACK = const(0x90)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)

_F_CLEAN = const(0x02)
_F_WILL = const(0x04)
_F_WILL_RETAIN = const(0x20)
_F_PASSWORD = const(0x40)
_F_USER = const(0x80)

PINGREQ_PKT = b"\xc0\x00"
DISCONNECT_PKT = b"\xe0\x00"


def _b(s):
    return s.encode() if isinstance(s, str) else s


def varlen_size(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def put_varlen(buf, i, n):
    """Write the remaining-length field at buf[i]; return the index after it."""
    if n > 268435455:
        raise ValueError("packet too large")
    while True:
        d = n & 0x7F
        n >>= 7
        if n:
            d |= 0x80
        buf[i] = d
        i += 1
        if not n:
            return i


def put_u16(buf, i, v):
    buf[i] = v >> 8
    buf[i + 1] = v & 0xFF
    return i + 2


def put_str(buf, i, s):
    n = len(s)
    i = put_u16(buf, i, n)
    buf[i : i + n] = s
    return i + n


def connect(buf, client_id, keepalive, clean=True, user=None, password=None, will=None):
    """Encode CONNECT into buf; will is (topic, message, qos, retain) or None. Returns length."""
    client_id = _b(client_id)
    flags = _F_CLEAN if clean else 0
    rl = 10 + 2 + len(client_id)
    if will:
        wt, wm = _b(will[0]), _b(will[1])
        flags |= _F_WILL | (will[2] << 3) | (_F_WILL_RETAIN if will[3] else 0)
        rl += 4 + len(wt) + len(wm)
    if user is not None:
        user = _b(user)
        flags |= _F_USER
        rl += 2 + len(user)
        if password is not None:
            password = _b(password)
            flags |= _F_PASSWORD
            rl += 2 + len(password)
    if 1 + varlen_size(rl) + rl > len(buf):
        raise ValueError("CONNECT too large")
    buf[0] = CONNECT
    i = put_varlen(buf, 1, rl)
    i = put_str(buf, i, b"MQTT")
    buf[i] = 4  # protocol level 3.1.1
    buf[i + 1] = flags
    i = put_u16(buf, i + 2, keepalive)
    i = put_str(buf, i, client_id)
    if will:
        i = put_str(buf, i, wt)
        i = put_str(buf, i, wm)
    if user is not None:
        i = put_str(buf, i, user)
        if password is not None:
            i = put_str(buf, i, password)
    return i


def publish_header(buf, topic, payload_len, qos=0, retain=False, dup=False, pid=0):
    """Encode a PUBLISH fixed header, topic and packet id; the payload is sent after it."""
    topic = _b(topic)
    rl = 2 + len(topic) + (2 if qos else 0) + payload_len
    if 1 + varlen_size(rl) + 2 + len(topic) + 2 > len(buf):
        raise ValueError("topic too long")
    buf[0] = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    i = put_varlen(buf, 1, rl)
    i = put_str(buf, i, topic)
    if qos:
        i = put_u16(buf, i, pid)
    return i


def subscribe(buf, pid, topic, qos=1):
    topic = _b(topic)
    buf[0] = SUBSCRIBE
    i = put_varlen(buf, 1, 2 + 2 + len(topic) + 1)
    i = put_u16(buf, i, pid)
    i = put_str(buf, i, topic)
    buf[i] = qos
    return i + 1


def puback(buf, pid):
    buf[0] = PUBACK
    buf[1] = 2
    return put_u16(buf, 2, pid)


def u16(b, i):
    return (b[i] << 8) | b[i + 1]


def parse_publish(first, body):
    """Split a PUBLISH body (after the remaining length) into (topic, pid, payload, qos, retain).
    topic and payload are memoryview slices of body (no copies)."""
    qos = (first >> 1) & 3
    n = u16(body, 0)
    topic = body[2 : 2 + n]
    i = 2 + n
    pid = 0
    if qos:
        pid = u16(body, i)
        i += 2
    return topic, pid, body[i:], qos, first & 1

"""MQTT 5 packet encoding and an incremental parser: bytes in, frozen packets out. No I/O.

Only what the gateway's own connections use: CONNECT (with will), CONNACK, PUBLISH (QoS 0/1),
PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP and DISCONNECT. Packet layouts follow the OASIS
MQTT 5.0 specification, section 3.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgspec

__all__ = [
    "CONNACK",
    "DISCONNECT",
    "PINGREQ_BYTES",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "Packet",
    "PacketParser",
    "ProtocolError",
    "Publish",
    "Will",
    "encode_connect",
    "encode_disconnect",
    "encode_puback",
    "encode_publish",
    "encode_subscribe",
]

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

PINGREQ_BYTES = bytes((PINGREQ, 0))

# Property identifiers (MQTT 5.0, 2.2.2.2).
_P_SESSION_EXPIRY = 0x11
_P_RECEIVE_MAXIMUM = 0x21
_P_WILL_DELAY = 0x18


class ProtocolError(Exception):
    """The peer sent bytes that are not valid MQTT."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("MQTT strings are limited to 65535 bytes")
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


@dataclass(frozen=True, slots=True)
class Will:
    """The last-will message the broker publishes when the connection dies unannounced."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def encode_connect(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int = 65535,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    """CONNECT for protocol level 5."""
    flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = bytes((_P_SESSION_EXPIRY,)) + struct.pack("!I", session_expiry)
    props += bytes((_P_RECEIVE_MAXIMUM,)) + struct.pack("!H", receive_maximum)
    body = _string("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive)
    body += _varint(len(props)) + props
    body += _string(client_id)
    if will is not None:
        will_props = bytes((_P_WILL_DELAY,)) + struct.pack("!I", 0)
        body += _varint(len(will_props)) + will_props + _string(will.topic) + _string(will.payload)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT, body)


def encode_subscribe(
    mid: int, filters: list[tuple[str, int]], *, no_local: bool = True, retain_handling: int = 1
) -> bytes:
    """SUBSCRIBE; each filter with its maximum QoS.

    ``no_local`` hides our own publishes; ``retain_handling`` 1 sends retained messages only for
    a subscription that did not exist yet, so re-subscribing a resumed session replays nothing.
    """
    body = struct.pack("!H", mid) + b"\x00"
    options = (0x04 if no_local else 0) | (retain_handling << 4)
    for topic, qos in filters:
        body += _string(topic) + bytes((qos | options,))
    return _packet(SUBSCRIBE, body)


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    mid: int = 0,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """PUBLISH with an empty property block."""
    first = PUBLISH | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = _string(topic)
    if qos:
        body += struct.pack("!H", mid)
    body += b"\x00" + payload
    return _packet(first, body)


_PUBACK = struct.Struct("!BBH")


def encode_puback(mid: int) -> bytes:
    """PUBACK with success (reason code omitted, as 3.4.2.1 allows)."""
    return _PUBACK.pack(PUBACK, 2, mid)


def encode_disconnect() -> bytes:
    """A normal DISCONNECT: the broker discards the will and keeps the session."""
    return bytes((DISCONNECT, 0))


class Publish(msgspec.Struct, frozen=True, gc=False):
    """An inbound PUBLISH. ``mid`` is 0 for QoS 0."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool
    retain: bool


class Packet(msgspec.Struct, frozen=True, gc=False):
    """Any other inbound packet: its type nibble and body."""

    kind: int
    body: bytes


# A PUBLISH's fixed-header flags (low nibble) -> (qos, dup, retain).
_PUBLISH_FLAGS = tuple(((f >> 1) & 0x03, bool(f & 0x08), bool(f & 0x01)) for f in range(16))


class PacketParser:
    """Incremental parser: ``feed`` bytes, get every complete packet back, in order."""

    __slots__ = ("_buf", "_topics")

    def __init__(self) -> None:
        self._buf = bytearray()
        # Nodes publish on a few topics each: decoding the same bytes to the same str
        # again for every message is measurable at tens of thousands of messages per second.
        self._topics: dict[bytes, str] = {}

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Publish | Packet]:
        buf = self._buf
        buf += data
        out: list[Publish | Packet] = []
        pos = 0
        end = len(buf)
        topics = self._topics
        while end - pos >= 2:
            first = buf[pos]
            # Remaining length: 1 to 4 bytes, 7 bits each. One byte (< 128) is the common case.
            length = buf[pos + 1]
            i = pos + 2
            if length & 0x80:
                length &= 0x7F
                shift = 7
                complete = False
                while i < end:
                    byte = buf[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolError("remaining length longer than 4 bytes")
                if not complete:
                    break
            stop = i + length
            if stop > end:
                break
            if first & 0xF0 == PUBLISH:
                qos, dup, retain = _PUBLISH_FLAGS[first & 0x0F]
                if qos == 3:
                    raise ProtocolError("PUBLISH with QoS 3 (both QoS bits set)")
                if length < 2:
                    raise ProtocolError("PUBLISH truncated before its topic")
                tlen = (buf[i] << 8) | buf[i + 1]
                tstart = i + 2
                j = tstart + tlen
                if j + (2 if qos else 0) > stop:
                    raise ProtocolError("PUBLISH topic overruns the packet")
                tbytes = bytes(buf[tstart:j])
                topic = topics.get(tbytes)
                if topic is None:
                    try:
                        topic = tbytes.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError("topic is not UTF-8") from None
                    if len(topics) < 65536:
                        topics[tbytes] = topic
                mid = 0
                if qos:
                    mid = (buf[j] << 8) | buf[j + 1]
                    j += 2
                    if not mid:
                        raise ProtocolError("QoS 1/2 PUBLISH with packet identifier 0")
                # Property block: skip it (we asked for no topic aliases, so none matter).
                if j >= stop:
                    raise ProtocolError("PUBLISH truncated before its properties")
                plen = buf[j]
                j += 1
                if plen & 0x80:
                    plen &= 0x7F
                    shift = 7
                    while True:
                        if j >= stop:
                            raise ProtocolError("PUBLISH truncated before its properties")
                        byte = buf[j]
                        j += 1
                        plen |= (byte & 0x7F) << shift
                        if not byte & 0x80:
                            break
                        shift += 7
                j += plen
                if j > stop:
                    raise ProtocolError("PUBLISH properties overrun the packet")
                out.append(Publish(topic, bytes(buf[j:stop]), qos, mid, dup, retain))
            else:
                out.append(Packet(first & 0xF0, bytes(buf[i:stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return out


def parse_reason(body: bytes, offset: int) -> int:
    """The reason code at ``offset`` of a packet body, 0 (success) when omitted."""
    return body[offset] if len(body) > offset else 0


def packet_id(body: bytes) -> int:
    """The packet identifier at the start of a PUBACK/SUBACK body."""
    if len(body) < 2:
        raise ProtocolError("packet too short for a packet identifier")
    return int((body[0] << 8) | body[1])


def skip_properties(body: bytes, offset: int) -> int:
    """The offset just past a property block that starts at ``offset``."""
    length = 0
    shift = 0
    while True:
        if offset >= len(body):
            raise ProtocolError("truncated property length")
        byte = body[offset]
        offset += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return offset + length
        shift += 7
        if shift > 21:
            raise ProtocolError("property length longer than 4 bytes")

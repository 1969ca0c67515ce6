"""MQTT 5 packet codec: exact bytes and incremental parsing."""

from __future__ import annotations

import pytest

from gateway.mqtt import wire


def test_connect_bytes() -> None:
    got = wire.encode_connect("gw", keepalive=30, clean_start=False, session_expiry=3600,
                              receive_maximum=100, username="u", password="p")
    assert got == bytes([
        0x10, 29,
        0, 4, *b"MQTT", 5, 0xC0, 0, 30,
        8, 0x11, 0, 0, 0x0E, 0x10, 0x21, 0, 100,
        0, 2, *b"gw", 0, 1, *b"u", 0, 1, *b"p",
    ])


def test_connect_with_will() -> None:
    got = wire.encode_connect("n", keepalive=10, clean_start=True, session_expiry=0,
                              will=wire.Will("s", b"off", qos=1, retain=True))
    assert got[9] == 0x02 | 0x04 | 0x08 | 0x20  # clean start, will, will QoS1, will retain
    assert got.endswith(bytes([5, 0x18, 0, 0, 0, 0, 0, 1, *b"s", 0, 3, *b"off"]))


def test_subscribe_publish_puback_bytes() -> None:
    assert wire.encode_subscribe(1, [("a/#", 1)]) == bytes(
        [0x82, 9, 0, 1, 0, 0, 3, *b"a/#", 0x01 | 0x04 | 0x10])
    assert wire.encode_publish("t", b"x", qos=1, mid=258, retain=True) == bytes(
        [0x33, 7, 0, 1, *b"t", 1, 2, 0, *b"x"])
    assert wire.encode_puback(258) == bytes([0x40, 2, 1, 2])


def test_large_remaining_length() -> None:
    payload = b"z" * 200_000
    data = wire.encode_publish("t", payload)
    assert data[1] & 0x80 and data[2] & 0x80  # three length bytes
    (p,) = wire.PacketParser().feed(data)
    assert isinstance(p, wire.Publish) and p.payload == payload


def test_parser_handles_every_split_point() -> None:
    data = (wire.encode_publish("a/b", b"hello", qos=1, mid=7)
            + wire.encode_publish("a/c", b"y" * 300, dup=True) + bytes([0x40, 2, 0, 7]))
    for cut in range(len(data) + 1):
        parser = wire.PacketParser()
        out = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert [type(p).__name__ for p in out] == ["Publish", "Publish", "Packet"]
        assert out[0] == wire.Publish("a/b", b"hello", 1, 7, False, False)
        assert out[1].dup and out[1].payload == b"y" * 300  # type: ignore[union-attr]
        assert parser.buffered == 0


def test_publish_properties_are_skipped() -> None:
    # A PUBLISH carrying a property block (payload format indicator = 1).
    body = bytes([0, 1, *b"t", 0, 9, 2, 0x01, 1]) + b"data"
    (p,) = wire.PacketParser().feed(bytes([0x32, len(body)]) + body)
    assert isinstance(p, wire.Publish) and p.payload == b"data" and p.mid == 9


def test_protocol_errors() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.PacketParser().feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    with pytest.raises(wire.ProtocolError):
        wire.PacketParser().feed(bytes([0x30, 4, 0, 2, 0xFF, 0xFE]))


def test_truncated_publish_is_an_error_not_a_crash() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.PacketParser().feed(bytes([0x32, 3, 0, 1, *b"t"]) + bytes([0x40, 2, 0, 1]))


@pytest.mark.parametrize(
    "packet",
    [
        bytes([0x30, 0]),  # no room for a topic length
        bytes([0x30, 1, 0]),  # half a topic length
        bytes([0x30, 3, 0, 9, *b"t"]),  # topic longer than the packet
        bytes([0x32, 4, 0, 1, *b"t", 0]),  # QoS 1 without room for its packet id
    ],
)
@pytest.mark.parametrize("after", [b"", bytes([0x30, 6, 0, 1, *b"t", 0, *b"ok"])])
def test_publish_fields_never_read_past_the_packet(packet: bytes, after: bytes) -> None:
    # Alone, or with the next packet right behind it (whose bytes a sloppy parser would take).
    with pytest.raises(wire.ProtocolError):
        wire.PacketParser().feed(packet + after)

"""Property-based tests of the MQTT wire parser: whatever bytes the broker's socket delivers, in
whatever chunks, feed() returns packets or raises ProtocolError (issue 13, fuzzing)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt import wire

_TOPIC = st.text(min_size=1, max_size=40).filter(lambda t: len(t.encode()) < 0xFFFF)


@st.composite
def _publish(draw: st.DrawFn) -> bytes:
    qos = draw(st.sampled_from([0, 1]))
    return wire.encode_publish(
        draw(_TOPIC), draw(st.binary(max_size=400)), qos=qos,
        mid=draw(st.integers(1, 65535)) if qos else 0,
        retain=draw(st.booleans()), dup=draw(st.booleans()),
    )


_CONTROL = st.one_of(
    st.builds(lambda mid: wire.encode_puback(mid), st.integers(1, 65535)),
    st.just(bytes([wire.PINGRESP, 0])),
    st.builds(lambda b: bytes([wire.CONNACK, 3, int(b), 0, 0]), st.booleans()),
    st.builds(lambda mid: bytes([wire.SUBACK, 4, mid >> 8, mid & 0xFF, 0, 1]),
              st.integers(1, 65535)),
    st.just(bytes([wire.DISCONNECT, 1, 0x8B])),
)
_STREAM = st.lists(st.one_of(_publish(), _CONTROL), min_size=1, max_size=12)


def _cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=8).map(sorted)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _run(chunks: list[bytes]) -> tuple[list[wire.Publish | wire.Packet], str | None]:
    """Every packet the parser gave back before it stopped, and its error (None: no error)."""
    parser = wire.PacketParser()
    out: list[wire.Publish | wire.Packet] = []
    for chunk in chunks:
        try:
            out += parser.feed(chunk)
        except wire.ProtocolError as exc:
            assert str(exc), "a protocol error says what was wrong"
            return out, str(exc)
    return out, None


@settings(max_examples=300, deadline=None)
@given(packets=_STREAM, data=st.data())
def test_any_split_of_a_valid_stream_gives_the_same_packets(
    packets: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(packets)
    whole, error = _run([stream])
    assert error is None and len(whole) == len(packets)
    for packet, got in zip(packets, whole, strict=True):
        (alone,) = wire.PacketParser().feed(packet)
        assert got == alone
    cuts = data.draw(_cuts(stream))
    assert _run(_chunks(stream, cuts)) == (whole, None)
    # One byte at a time, the hardest split.
    assert _run([stream[i:i + 1] for i in range(len(stream))]) == (whole, None)


@settings(max_examples=500, deadline=None)
@given(junk=st.binary(max_size=300), prefix=_STREAM, data=st.data())
def test_arbitrary_bytes_give_packets_or_a_protocol_error(
    junk: bytes, prefix: list[bytes], data: st.DataObject
) -> None:
    # Valid packets, then anything: only ProtocolError may escape, whatever the chunks.
    stream = b"".join(prefix) + junk
    # Byte by byte, every packet before the first bad byte comes out before the error.
    every, error = _run([stream[i:i + 1] for i in range(len(stream))])
    assert every[: len(prefix)] == _run([b"".join(prefix)])[0]
    for p in every:
        if isinstance(p, wire.Publish):
            assert p.qos in (0, 1, 2) and 0 <= p.mid <= 0xFFFF
            assert (p.mid == 0) == (p.qos == 0)
    # Any other split: the same error (or none), and packets that are a prefix of those. A feed
    # that raises drops the packets of its own chunk: the connection closes on the error, and
    # what was not acknowledged is redelivered on the next one.
    got, got_error = _run(_chunks(stream, data.draw(_cuts(stream))))
    assert got_error == error
    assert got == every[: len(got)]
    if error is None:
        assert got == every


@settings(max_examples=200, deadline=None)
@given(
    flags=st.integers(0, 15),
    mid=st.sampled_from([0, 1, 65535]) | st.integers(0, 65535),
    payload=st.binary(max_size=20),
)
def test_publish_with_any_fixed_header_flags(flags: int, mid: int, payload: bytes) -> None:
    # A well-formed body under every fixed-header flag combination. QoS 3 (both QoS bits) is a
    # malformed packet (MQTT 5.0, 3.3.1.2): it must be a protocol error, not a message with a
    # QoS that the ingest would go on to acknowledge as if it were QoS 1; so is a QoS 1 message
    # with packet id 0, whose PUBACK would acknowledge nothing.
    qos_bits = (flags >> 1) & 3
    body = bytes([0, 1, *b"t", *((mid >> 8, mid & 0xFF) if qos_bits else ()), 0]) + payload
    out, error = _run([bytes([wire.PUBLISH | flags, len(body)]) + body])
    if qos_bits == 3:
        assert out == [] and error is not None and "QoS" in error
    elif qos_bits and mid == 0:
        # A QoS 1 or 2 PUBLISH carries a non-zero packet identifier (MQTT 5.0, 2.2.1).
        assert out == [] and error is not None and "packet identifier" in error
    else:
        (p,) = out
        assert isinstance(p, wire.Publish) and p.qos == qos_bits

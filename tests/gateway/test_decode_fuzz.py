"""Property-based tests of the decoder: whatever a client of the broker publishes, decode returns
values or reasons and never raises (issue 13: one payload used to stop ingest for good)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.decode import Decoder
from gateway.ingest.mapping import MappingRule
from gateway.model import CommandAck, Message, NodeStatus, Rejected

_DECODER = Decoder()
_NODE = st.one_of(
    st.sampled_from(
        ["node-a", "n", "a" * 64, "a" * 65, "", "+", "#", "no de", "é", "x\n", "..", "a/b"]
    ),
    st.text(max_size=70),
)
_KIND = st.sampled_from(
    ["readings", "status", "cmd", "cmd/ack", "committed", "", "readings/x", "other"]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def _nested(depth: int, open_: bytes, close: bytes) -> bytes:
    return open_ * depth + close * depth


_PAYLOAD = st.one_of(
    st.binary(max_size=300),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.builds(
        _nested,
        st.integers(1, 20000),
        st.sampled_from([b"[", b'{"m":', b'[{"b":1,"s":0,"m":']),
        st.sampled_from([b"]", b"}", b""]),
    ),
    st.integers(min_value=-(10**400), max_value=10**400).map(
        lambda n: b'{"b":1,"s":%d,"m":{"temp_c":%d}}' % (n, n)
    ),
    st.binary(max_size=40).map(lambda b: b'{"b":1,"s":0,"m":{"' + b + b'":1}}'),
)
_OK = (Message, Rejected, NodeStatus, CommandAck)


@settings(max_examples=400, deadline=None)
@given(node=_NODE, kind=_KIND, payload=_PAYLOAD)
def test_v1_decode_never_raises(node: str, kind: str, payload: bytes) -> None:
    for item in _DECODER.decode(f"roost/v1/{node}/{kind}", payload):
        assert isinstance(item, _OK)


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=60), payload=_PAYLOAD)
def test_mapped_decode_never_raises(topic: str, payload: bytes) -> None:
    rules = (
        MappingRule("n", "pico/{metric}/{sensor}", "number", node="pico-{sensor}"),
        MappingRule("j", "tele/{node_id}/SENSOR", "json"),
    )
    decoder = Decoder(rules)
    for t in (topic, f"pico/temperature/{topic}", f"tele/{topic}/SENSOR"):
        for item in decoder.decode(t, payload):
            assert isinstance(item, _OK)


def test_five_thousand_levels_are_a_reason() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    (item,) = _DECODER.decode("roost/v1/n/readings", deep)
    assert isinstance(item, Rejected)
    assert "RecursionError" in item.reason
    for kind in ("status", "cmd/ack"):
        (item,) = _DECODER.decode(f"roost/v1/n/{kind}", deep)
        assert isinstance(item, Rejected)

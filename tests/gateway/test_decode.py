"""The pure decoder: every contract case and every bad-input class, without a broker."""

from __future__ import annotations

import msgspec
import pytest

from gateway.ingest.decode import Decoder
from gateway.ingest.mapping import MappingRule, snake_case
from gateway.model import CommandAck, Flags, Message, NodeStatus, Rejected

T = "roost/v1/n1/readings"


def one(topic: str, payload: bytes, **kw: object) -> object:
    out = Decoder(**kw).decode(topic, payload)  # type: ignore[arg-type]
    assert len(out) == 1
    return out[0]


def test_single_reading() -> None:
    m = one(T, b'{"b":7,"s":1042,"t":1763812345123,"u":5234111,"m":{"temp_c":21.4,"rh_pct":45}}')
    assert m == Message("n1", 7, 1042, 1763812345123, 5234111, (("temp_c", 21.4), ("rh_pct", 45.0)))


def test_array_keeps_order() -> None:
    out = Decoder().decode(T, b'[{"b":1,"s":2,"m":{"x":1}},{"b":1,"s":3,"m":{"x":2}}]')
    assert [m.seq for m in out if isinstance(m, Message)] == [2, 3]


def test_time_is_optional() -> None:
    m = one(T, b'{"b":1,"s":0,"u":10,"m":{"x":1}}')
    assert isinstance(m, Message) and m.t is None and m.uptime_ms == 10


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed JSON"),
        (b"{", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b'{"b":1,"s":0,"m":{"x":NaN}}', "malformed JSON"),
        (b'{"b":1,"s":0,"m":{"x":-Infinity}}', "malformed JSON"),
        (b'{"b":1,"s":0,"m":{"x":1e400}}', "invalid reading"),
        (b'{"b":-1,"s":0,"m":{"x":1}}', "invalid reading"),
        (b'{"b":1,"s":0,"m":{"x":true}}', "invalid reading"),
        (b'{"b":1,"s":0,"m":{"x":null}}', "invalid reading"),
        (b'{"b":1,"s":0,"m":{"Temp C":1}}', "invalid reading"),
        (b'{"b":1,"s":0,"m":[1,2]}', "invalid reading"),
        (b'{"s":0,"m":{"x":1}}', "missing required field `b`"),
        (b'{"b":1,"s":0}', "missing required field `m`"),
        (b'{"b":1,"s":9007199254740993,"m":{"x":1}}', "invalid reading"),
        (b"[]", "empty reading array"),
        (b'"hello"', "invalid reading"),
        (b"42", "invalid reading"),
    ],
)
def test_bad_readings_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    r = one(T, payload)
    assert isinstance(r, Rejected)
    assert reason in r.reason
    assert r.payload == payload and r.topic == T and r.node_id == "n1"


def test_oversize_payload() -> None:
    r = one(T, b"x" * 300, max_payload_bytes=256)
    assert isinstance(r, Rejected) and "max_payload_bytes" in r.reason


@pytest.mark.parametrize(
    "node", ["", "a b", "x'; DROP TABLE nodes;--", "é", "-lead", "a" * 65, "node\n"]
)
def test_unsafe_node_ids(node: str) -> None:
    r = one(f"roost/v1/{node}/readings", b'{"b":1,"s":0,"m":{"x":1}}')
    assert isinstance(r, Rejected) and "node id" in r.reason


def test_status_and_ack_and_ignored_topics() -> None:
    s = one("roost/v1/n1/status", b'{"state":"offline"}')
    assert s == NodeStatus("n1", "offline")
    a = one("roost/v1/n1/cmd/ack", b'{"id":"c17","ok":false,"error":"bad op"}')
    assert a == CommandAck("n1", "c17", False, "bad op")
    assert Decoder().decode("roost/v1/n1/cmd", b'{"op":"time"}') == []
    assert Decoder().decode("roost/v1/n1/status", b"") == []
    u = one("roost/v1/n1/other", b"{}")
    assert isinstance(u, Rejected) and "unknown topic kind" in u.reason
    f = one("somewhere/else", b"1")
    assert isinstance(f, Rejected) and "no mapping rule" in f.reason


def test_number_mapping() -> None:
    rule = MappingRule("pico", "pico/{metric}/{sensor}", "number", node="pico-{sensor}",
                       rename={"temperature": "temp_c"})
    assert rule.subscription == "pico/+/+"
    m = one("pico/temperature/dht22", b"21.4\n", rules=[rule])
    assert m == Message("pico-dht22", None, None, None, None, (("temp_c", 21.4),),
                        int(Flags.MAPPED | Flags.SYNTHETIC_ID))
    assert Decoder(rules=[rule]).decode("pico/temperature", b"1")[0].reason.startswith("no mapping")  # type: ignore[union-attr]
    bad = one("pico/temperature/dht22", b"nan", rules=[rule])
    assert isinstance(bad, Rejected) and "not finite" in bad.reason


def test_json_mapping_flattens_nested_numbers() -> None:
    rule = MappingRule("tasmota", "tele/{node_id}/SENSOR", "json")
    m = one("tele/plug/SENSOR",
            b'{"Time":"x","ENERGY":{"Power":12,"Voltage":231.5,"Ok":true},"TempUnit":"C"}',
            rules=[rule])
    assert isinstance(m, Message)
    assert dict(m.metrics) == {"energy_power": 12.0, "energy_voltage": 231.5}


def test_mapping_templates_are_checked() -> None:
    with pytest.raises(ValueError, match="lacks"):
        MappingRule("x", "a/{metric}", "number")  # no {node_id}
    with pytest.raises(ValueError, match="payload"):
        MappingRule("x", "a/{node_id}", "xml")


def test_snake_case() -> None:
    assert snake_case("AM2301-Humidity") == "am2301_humidity"
    assert snake_case("TempUnit") == "temp_unit"


def test_bad_metric_names_after_the_topic_is_known() -> None:
    # The second and later messages on a topic take the cached route: every check still runs.
    d = Decoder(max_payload_bytes=256)
    assert isinstance(d.decode(T, b'{"b":1,"s":0,"m":{"x":1}}')[0], Message)
    (big,) = d.decode(T, b'{"b":1,"s":1,"m":{"x":1}}' + b" " * 300)
    assert isinstance(big, Rejected) and "max_payload_bytes" in big.reason
    for name in ("Temp C", "x\n", "_x", "x" * 64, "temp-c"):
        key = msgspec.json.encode(name)
        (r,) = d.decode(T, b'{"b":1,"s":2,"m":{"ok":1,%s:2}}' % key)
        assert isinstance(r, Rejected) and "invalid reading: metric name" in r.reason, name
    (ok,) = d.decode(T, b'{"b":1,"s":3,"m":{"%s":1}}' % (b"x" * 63))
    assert isinstance(ok, Message)


def test_array_with_a_bad_metric_name_keeps_the_good_elements() -> None:
    payload = (
        b'[{"b":1,"s":1,"m":{"x":1}},{"b":1,"s":2,"m":{"Bad Name":2}},{"b":1,"s":3,"m":{"y":3}}]'
    )
    out = Decoder().decode(T, payload)
    assert [type(o) for o in out] == [Message, Rejected, Message]
    bad = out[1]
    assert isinstance(bad, Rejected)
    assert bad.reason.startswith("invalid reading at [1]: metric name 'Bad Name'")
    assert bad.payload == b'{"b":1,"s":2,"m":{"Bad Name":2}}'
    assert [m.seq for m in out if isinstance(m, Message)] == [1, 3]

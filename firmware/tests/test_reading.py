# The v1 reading message and replay arrays.
import json

from roost.reading import batch, encode


def test_encode_without_time():
    s = encode(7, 0, None, 5234, {"temp_c": 21.4})
    assert s == '{"b":7,"s":0,"u":5234,"m":{"temp_c":21.4}}', s


def test_encode_with_time():
    s = encode(7, 1042, 1763812345123, 5234111, {"rh_pct": 45.2})
    assert s == '{"b":7,"s":1042,"t":1763812345123,"u":5234111,"m":{"rh_pct":45.2}}', s
    d = json.loads(s)
    assert d["t"] == 1763812345123


def test_batch():
    assert batch([b'{"s":1}']) == b'{"s":1}'
    assert batch([b'{"s":1}', b'{"s":2}']) == b'[{"s":1},{"s":2}]'
    assert [r["s"] for r in json.loads(batch([b'{"s":1}', b'{"s":2}', b'{"s":3}']))] == [1, 2, 3]

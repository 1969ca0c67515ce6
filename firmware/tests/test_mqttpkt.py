# Exact bytes of the MQTT 3.1.1 codec (spec section 3).
from roost import mqttpkt as p


def enc(fn, *args, **kw):
    b = bytearray(300)
    n = fn(b, *args, **kw)
    return bytes(b[:n])


def test_varlen_boundaries():
    for n, want in (
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ):
        b = bytearray(4)
        k = p.put_varlen(b, 0, n)
        assert bytes(b[:k]) == want, (n, bytes(b[:k]))
        assert p.varlen_size(n) == len(want)
    try:
        p.put_varlen(bytearray(5), 0, 268435456)
        raise AssertionError("accepted an oversized length")
    except ValueError:
        pass


def test_connect_minimal():
    got = enc(p.connect, "n1", 60)
    assert got == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02n1", got


def test_connect_will_user_password():
    got = enc(p.connect, b"abc", 30, True, "u", "pw", ("t/s", '{"state":"offline"}', 1, True))
    want = (
        b"\x10\x30\x00\x04MQTT\x04\xee\x00\x1e\x00\x03abc"
        + b"\x00\x03t/s"
        + b'\x00\x13{"state":"offline"}'
        + b"\x00\x01u\x00\x02pw"
    )
    assert got == want, got


def test_connect_persistent_session_user_only():
    got = enc(p.connect, "c", 10, False, "user")
    assert got == b"\x10\x13\x00\x04MQTT\x04\x80\x00\x0a\x00\x01c\x00\x04user", got


def test_connect_too_large_for_buffer():
    try:
        p.connect(bytearray(20), "client-id-that-is-long", 60)
        raise AssertionError
    except ValueError:
        pass


def test_publish_qos0():
    got = enc(p.publish_header, "a/b", 5)
    assert got == b"\x30\x0a\x00\x03a/b", got


def test_publish_qos1_retain_dup():
    got = enc(p.publish_header, "t", 2, 1, True, True, 0x1234)
    assert got == b"\x3b\x07\x00\x01t\x12\x34", got
    got = enc(p.publish_header, "t", 200, 1, False, False, 1)
    assert got == b"\x32\xcd\x01\x00\x01t\x00\x01", got


def test_subscribe_and_puback():
    assert enc(p.subscribe, 7, "roost/v1/x/cmd", 1) == (
        b"\x82\x13\x00\x07\x00\x0eroost/v1/x/cmd\x01"
    )
    assert enc(p.puback, 0xABCD) == b"\x40\x02\xab\xcd"
    assert p.PINGREQ_PKT == b"\xc0\x00" and p.DISCONNECT_PKT == b"\xe0\x00"


def test_parse_publish():
    body = memoryview(b"\x00\x03a/b\x00\x2ahello")
    topic, pid, payload, qos, retain = p.parse_publish(0x33, body)
    assert bytes(topic) == b"a/b" and pid == 42 and bytes(payload) == b"hello"
    assert qos == 1 and retain == 1
    topic, pid, payload, qos, retain = p.parse_publish(0x30, memoryview(b"\x00\x01tXY"))
    assert bytes(topic) == b"t" and pid == 0 and bytes(payload) == b"XY" and qos == 0

# The flash ring: order, acknowledgement, segment files, reboot survival, drop counting.
import os

from roost.ring import Ring

_n = [0]


def fresh(**kw):
    _n[0] += 1
    path = "ringtest%d" % _n[0]
    try:
        for name in os.listdir(path):
            os.remove(path + "/" + name)
    except OSError:
        pass
    return path, Ring(path, **kw)


def rec(i):
    return '{"s":%d}' % i


def files(path):
    return sorted(os.listdir(path))


def test_append_peek_ack_in_order():
    path, r = fresh(capacity=100, segment=4)
    for i in range(10):
        assert r.append(rec(i))
    assert r.count == 10
    got = []
    while r.count:
        batch = r.peek(3)
        assert 1 <= len(batch) <= 3
        got.extend(batch)
        r.ack(len(batch))
    assert got == [rec(i).encode() for i in range(10)], got
    assert r.peek() == []
    # fully consumed closed segments are deleted; the open newest one stays for appends
    assert files(path) == ["2.ack", "2.log"], files(path)


def test_peek_respects_byte_budget_but_returns_one():
    _, r = fresh(segment=16)
    for i in range(5):
        r.append('{"pad":"%s","s":%d}' % ("x" * 40, i))
    assert len(r.peek(10, 120)) == 2
    assert len(r.peek(10, 10)) == 1  # one record always fits, however large


def test_survives_reboot_mid_segment():
    path, r = fresh(capacity=100, segment=8)
    for i in range(12):
        r.append(rec(i))
    r.ack(5)
    r2 = Ring(path, capacity=100, segment=8)  # "reboot": a new instance over the same files
    assert r2.count == 7
    assert r2.peek(20) == [rec(i).encode() for i in range(5, 8)]
    r2.ack(3)
    assert r2.peek(20) == [rec(i).encode() for i in range(8, 12)]
    r2.append(rec(12))
    r3 = Ring(path, capacity=100, segment=8)
    out = []
    while r3.count:
        b = r3.peek(20)
        out.extend(b)
        r3.ack(len(b))
    assert out == [rec(i).encode() for i in range(8, 13)], out


def test_drop_oldest_counts_and_persists():
    path, r = fresh(capacity=5, segment=2)
    for i in range(8):
        assert r.append(rec(i))
    assert r.count == 5 and r.dropped == 3
    assert r.peek(1) == [rec(3).encode()]
    r2 = Ring(path, capacity=5, segment=2)
    assert r2.dropped == 3 and r2.count == 5
    out = []
    while r2.count:
        b = r2.peek(2)
        out.extend(b)
        r2.ack(len(b))
    assert out == [rec(i).encode() for i in range(3, 8)], out


def test_drop_newest_refuses_and_counts():
    _, r = fresh(capacity=3, segment=2, drop_oldest=False)
    results = [r.append(rec(i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert r.dropped == 2 and r.count == 3
    assert r.peek(5)[0] == rec(0).encode()


def test_torn_append_is_skipped_and_new_segment_started():
    path, r = fresh(capacity=100, segment=8)
    r.append(rec(0))
    r.append(rec(1))
    with open(path + "/0.log", "ab") as f:
        f.write(b'{"s":2')  # power lost in the middle of an append
    r2 = Ring(path, capacity=100, segment=8)
    assert r2.count == 2
    r2.append(rec(3))
    assert "1.log" in files(path)
    out = []
    while r2.count:
        b = r2.peek(8)
        out.extend(b)
        r2.ack(len(b))
    assert out == [rec(0).encode(), rec(1).encode(), rec(3).encode()], out


def test_files_stay_bounded():
    path, r = fresh(capacity=20, segment=4)
    for i in range(200):
        r.append(rec(i))
    assert r.count == 20 and r.dropped == 180
    logs = [n for n in files(path) if n.endswith(".log")]
    assert len(logs) <= 20 // 4 + 1, logs

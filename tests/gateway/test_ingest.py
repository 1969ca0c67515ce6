"""Ingest through a real mosquitto into a real SQLite file, with the gateway in-process."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.broker.managed import ManagedBroker
from gateway.mqtt.client import Connection, ConnectOptions
from gateway.service import Gateway
from gateway.store import writer as writer_module
from tests.conftest import InProcessGateways, wait_for
from tests.gateway.helpers import count, counter, db, publish_all, reading

pytestmark = pytest.mark.integration

MAPPINGS = """
[[ingest.mappings]]
name = "pico-tutorial"
topic = "pico/{metric}/{sensor}"
payload = "number"
node = "pico-{sensor}"
metric = "{metric}"
rename = { temperature = "temp_c", humidity = "rh_pct" }

[[ingest.mappings]]
name = "tasmota"
topic = "tele/{node_id}/SENSOR"
payload = "json"
rename = { am2301_temperature = "temp_c", am2301_humidity = "rh_pct" }
"""


@pytest.fixture
async def gateway(gateways: InProcessGateways) -> Gateway:
    return await gateways.start(MAPPINGS)


async def pub(broker: ManagedBroker, items: list[tuple[str, bytes]]) -> None:
    assert await publish_all(broker.port, "test-pub", items) == 0


def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def test_v1_round_trip(gateway: Gateway, broker: ManagedBroker, tmp_path: Path) -> None:
    payload = b'{"b":7,"s":1042,"t":1763812345123,"u":5234111,"m":{"temp_c":21.4,"rh_pct":45.2}}'
    await pub(broker, [("roost/v1/node-a/readings", payload)])
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "rows") == 2, what="2 rows")
    conn = db(d)
    rows = conn.execute(
        "SELECT n.node_id, m.boot, m.seq, m.ts, m.uptime_ms, m.flags, k.name, r.value "
        "FROM readings r JOIN messages m ON m.id = r.message_id "
        "JOIN nodes n USING (node_ref) JOIN metrics k USING (metric_ref) ORDER BY k.name"
    ).fetchall()
    assert rows == [
        ("node-a", 7, 1042, 1763812345123, 5234111, 0, "rh_pct", 45.2),
        ("node-a", 7, 1042, 1763812345123, 5234111, 0, "temp_c", 21.4),
    ]
    received = conn.execute("SELECT received FROM messages").fetchone()[0]
    assert received > 1763812345123  # receive time kept beside the node's own time


async def test_array_replay_and_dedup(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path
) -> None:
    replay = json.dumps([{"b": 3, "s": s, "u": s * 10, "m": {"temp_c": 20 + s}} for s in range(5)])
    await pub(broker, [("roost/v1/n1/readings", replay.encode())])
    # A redelivery of part of the same buffer (the node did not get our PUBACK) plus new ones.
    again = json.dumps(
        [{"b": 3, "s": s, "u": s * 10, "m": {"temp_c": 20 + s}} for s in range(3, 8)]
    )
    await pub(broker, [("roost/v1/n1/readings", again.encode())])
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "messages") == 10, what="10 messages seen")
    assert counter(d, "stored") == 8
    assert counter(d, "duplicates") == 2
    assert count(d, "SELECT count(*) FROM readings") == 8
    assert count(d, "SELECT count(DISTINCT seq) FROM messages") == 8


async def test_seq_gaps_are_counted(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path
) -> None:
    items = [("roost/v1/gappy/readings", reading(1, s)) for s in (0, 1, 2, 5, 6, 9)]
    await pub(broker, items)
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "stored") == 6)
    from gateway.store.reader import read_stats

    conn = db(d)
    assert read_stats(conn).seq_gaps == 4  # 3, 4, 7, 8


async def test_time_derived_from_last_sync(gateway: Gateway, broker: ManagedBroker,
                                           tmp_path: Path) -> None:
    synced = b'{"b":2,"s":0,"t":1763812345000,"u":10000,"m":{"temp_c":1}}'
    untimed = b'{"b":2,"s":1,"u":25000,"m":{"temp_c":2}}'
    never_synced = b'{"b":1,"s":0,"u":25000,"m":{"temp_c":3}}'
    await pub(broker, [("roost/v1/clock/readings", synced), ("roost/v1/clock/readings", untimed),
                       ("roost/v1/other/readings", never_synced)])
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "stored") == 3)
    conn = db(d)
    rows = dict(conn.execute("SELECT seq || ':' || boot, ts || ':' || flags FROM messages "
                             "WHERE node_ref = (SELECT node_ref FROM nodes WHERE node_id='clock')"))
    assert rows["1:2"] == f"{1763812345000 + 15000}:1"  # derived from the sync, flagged
    ts, flags, received = conn.execute(
        "SELECT ts, flags, received FROM messages WHERE node_ref = "
        "(SELECT node_ref FROM nodes WHERE node_id='other')").fetchone()
    assert (ts, flags) == (received, 2)  # receive time, flagged


BAD_INPUTS = [
    ("roost/v1/n2/readings", b"{not json", "malformed JSON"),
    ("roost/v1/n2/readings", b'{"b":"7","s":1,"m":{"temp_c":1}}', "invalid reading"),
    ("roost/v1/n2/readings", b'{"b":1,"s":1,"m":{"temp_c":NaN}}', "malformed JSON"),
    ("roost/v1/n2/readings", b'{"b":1,"s":1,"m":{"temp_c":Infinity}}', "malformed JSON"),
    ("roost/v1/n2/readings", b'{"b":1,"s":1,"m":{"temp_c":1e999}}', "invalid reading"),
    ("roost/v1/n2/readings", b'{"b":1,"m":{"temp_c":1}}', "missing required field"),
    ("roost/v1/n2/readings", b'{"b":1,"s":1,"m":{}}', "invalid reading"),
    ("roost/v1/n2/readings", b'{"b":1,"s":1,"m":{"t\'); DROP TABLE readings;--":1}}',
     "invalid reading"),
    ("roost/v1/n2/readings", b'{"b":1,"s":1,"m":{"temp_c":"21"}}', "invalid reading"),
    ("roost/v1/x';DROP TABLE nodes;--/readings", b'{"b":1,"s":1,"m":{"temp_c":1}}',
     "node id"),
    ("roost/v1/n2/readings", b"[" + b'{"b":1,"s":1,"m":{"temp_c":1}},' * 3000 + b"{}]",
     "exceeds ingest.max_payload_bytes"),
    ("roost/v1/n2/whatever", b"{}", "unknown topic kind"),
    ("roost/v1/n2/status", b'{"state":"sleeping"}', "invalid status"),
    ("pico/temperature/dht22", b"warm", "payload is not a number"),
    ("tele/plug/SENSOR", b'{"Time":"2024-01-01T00:00:00"}', "no numeric fields"),
]


async def test_bad_input_is_quarantined_and_ingest_goes_on(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path
) -> None:
    items = [(t, p) for t, p, _ in BAD_INPUTS]
    items.append(("roost/v1/n2/readings", reading(1, 0, temp_c=19.5)))
    await pub(broker, items)
    d = data(tmp_path)
    await wait_for(
        lambda: counter(d, "quarantined") == len(BAD_INPUTS) and counter(d, "stored") == 1,
        what="all quarantined, the good one stored",
    )
    conn = db(d)
    got = conn.execute("SELECT topic, reason, raw, raw_len FROM quarantine ORDER BY id").fetchall()
    assert len(got) == len(BAD_INPUTS)
    for (topic, reason, raw, raw_len), (want_topic, payload, why) in zip(
        got, BAD_INPUTS, strict=True
    ):
        assert topic == want_topic
        assert why in reason, (topic, reason)
        assert raw_len == len(payload)
        assert raw == payload[:4096]  # bounded copy of the raw bytes
    # The SQL-looking input did nothing but land in quarantine.
    assert conn.execute("SELECT count(*) FROM nodes WHERE node_id = 'n2'").fetchone()[0] == 1
    assert conn.execute("SELECT value FROM readings").fetchall() == [(19.5,)]


async def test_array_with_one_bad_element_keeps_the_rest(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path
) -> None:
    arr = (b'[{"b":1,"s":0,"m":{"temp_c":1}},{"b":1,"s":"x","m":{"temp_c":2}},'
           b'{"b":1,"s":2,"m":{"temp_c":3}}]')
    await pub(broker, [("roost/v1/n3/readings", arr)])
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "stored") == 2 and counter(d, "quarantined") == 1)
    conn = db(d)
    reason, raw = conn.execute("SELECT reason, raw FROM quarantine").fetchone()
    assert "at [1]" in reason
    assert raw == b'{"b":1,"s":"x","m":{"temp_c":2}}'


async def test_topic_mappings(gateway: Gateway, broker: ManagedBroker, tmp_path: Path) -> None:
    tasmota = (b'{"Time":"2024-05-01T10:00:00","AM2301":{"Temperature":21.7,"Humidity":48.1},'
               b'"TempUnit":"C"}')
    await pub(broker, [
        ("pico/temperature/dht22", b"21.4"),
        ("pico/humidity/dht22", b" 45.5\n"),
        ("tele/plug-1/SENSOR", tasmota),
    ])
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "stored") == 3)
    conn = db(d)
    rows = conn.execute(
        "SELECT n.node_id, k.name, r.value, m.flags FROM readings r "
        "JOIN messages m ON m.id = r.message_id JOIN nodes n USING (node_ref) "
        "JOIN metrics k USING (metric_ref) ORDER BY n.node_id, k.name"
    ).fetchall()
    assert rows == [
        ("pico-dht22", "rh_pct", 45.5, 4 | 8 | 2),
        ("pico-dht22", "temp_c", 21.4, 4 | 8 | 2),
        ("plug-1", "rh_pct", 48.1, 4 | 8 | 2),
        ("plug-1", "temp_c", 21.7, 4 | 8 | 2),
    ]
    # Mapped firmware has no identity of its own: the gateway numbers its messages.
    seqs = conn.execute("SELECT seq FROM messages m JOIN nodes n USING (node_ref) "
                        "WHERE n.node_id = 'pico-dht22' ORDER BY seq").fetchall()
    assert seqs == [(0,), (1,)]


async def test_status_birth_and_will(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path
) -> None:
    birth = (b'{"state":"online","fw":"1.2.0","board":"pico_w","boot":7,"ip":"10.42.0.17",'
             b'"rssi":-61,"mem_free":81234,"dropped":0}')
    await pub(broker, [("roost/v1/nodeb/status", birth)])
    d = data(tmp_path)
    await wait_for(lambda: count(d, "SELECT count(*) FROM nodes WHERE state='online'") == 1)
    # A node that dies unannounced: the broker publishes its will.
    from gateway.mqtt import wire

    node = await Connection.open(ConnectOptions(
        "127.0.0.1", broker.port, "nodeb", clean_start=True, session_expiry=0,
        will=wire.Will("roost/v1/nodeb/status", b'{"state":"offline"}')))
    node._fail(__import__("gateway.mqtt.client", fromlist=["x"]).ConnectionLost("cut"))
    await wait_for(lambda: count(d, "SELECT count(*) FROM nodes WHERE state='offline'") == 1,
                   what="will applied")
    row = db(d).execute("SELECT fw, board, boot, ip, rssi, mem_free FROM nodes").fetchone()
    assert row == ("1.2.0", "pico_w", 7, "10.42.0.17", -61, 81234)


async def test_time_command_sent_on_birth(gateway: Gateway, broker: ManagedBroker) -> None:
    node = await Connection.open(ConnectOptions("127.0.0.1", broker.port, "nodec",
                                                clean_start=True, session_expiry=0))
    await node.subscribe([("roost/v1/nodec/cmd", 1)])
    await node.publish("roost/v1/nodec/status", b'{"state":"online","boot":1}', retain=True)
    batch = await asyncio.wait_for(node.messages(), 10)
    cmd = json.loads(batch[0].payload)
    assert cmd["op"] == "time"
    assert abs(cmd["epoch_ms"] - __import__("time").time() * 1000) < 60_000
    await node.publish("roost/v1/nodec/cmd/ack", json.dumps({"id": cmd["id"], "ok": True}).encode())
    node.ack([m.mid for m in batch])
    await node.close()


async def test_no_puback_before_commit(gateway: Gateway, broker: ManagedBroker, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """While commits fail, nothing is acknowledged: the broker redelivers after a reconnect."""
    real = writer_module._execute
    failing = True

    def flaky(*args):  # type: ignore[no-untyped-def]
        if failing:
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args)

    monkeypatch.setattr(writer_module, "_execute", flaky)
    await pub(broker, [("roost/v1/held/readings", reading(1, 0))])
    assert gateway.writer is not None and gateway.ingest is not None
    await wait_for(lambda: gateway.writer.commit_errors >= 1, what="a failed commit")
    conn = gateway.ingest._conn
    assert conn is not None and conn.unacked == 1
    # Cut the link: an acked message would be gone from the broker; an unacked one comes back.
    from gateway.mqtt.client import ConnectionLost

    conn._fail(ConnectionLost("test cut"))
    await wait_for(lambda: gateway.ingest.state.connects >= 2, what="reconnect")
    failing = False
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "messages") == 2, what="the original and the redelivery")
    assert counter(d, "stored") == 1
    assert counter(d, "duplicates") == 1


async def test_deeply_nested_payload_is_quarantined_and_ingest_goes_on(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path
) -> None:
    # Issue 13, finding 1: 5,000 levels of '[' made msgspec raise RecursionError, which stopped
    # ingest and the gateway; the broker redelivered it on every start (a crash loop).
    deep = b"[" * 5000 + b"]" * 5000
    await pub(broker, [
        ("roost/v1/n9/readings", deep),
        ("roost/v1/n9/status", deep),
        ("roost/v1/n9/readings", reading(1, 0, temp_c=18.5)),
    ])
    d = data(tmp_path)
    await wait_for(
        lambda: counter(d, "quarantined") == 2 and counter(d, "stored") == 1,
        what="both nested payloads quarantined, the reading after them stored",
    )
    reasons = dict(db(d).execute("SELECT topic, reason FROM quarantine").fetchall())
    assert "RecursionError" in reasons["roost/v1/n9/readings"], reasons


async def test_an_array_of_bad_elements_logs_one_summary_line(
    gateway: Gateway, broker: ManagedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 13, finding 3: one line per bad element filled the log's burst with one message.
    arr = b"[" + b",".join(b'{"b":1,"s":"x%d","m":{"temp_c":2}}' % i for i in range(200)) + b"]"
    caplog.set_level("WARNING", logger="roost.ingest")
    await pub(broker, [("roost/v1/n4/readings", arr),
                       ("roost/v1/n5/readings", b"not json")])
    d = data(tmp_path)
    await wait_for(lambda: counter(d, "quarantined") == 201, what="201 quarantined")
    lines = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "200 of 200 elements" in lines[0] and "at [0]" in lines[0]
    assert "roost/v1/n5/readings" in lines[1]

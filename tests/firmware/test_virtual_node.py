"""The real firmware as virtual nodes against a real mosquitto, checked by an independent
subscriber: identity, birth and will, outages and replay, reboots, commands, watchdog, safe mode,
and the console protocol. Every node runs with ``-X heapsize=128k``."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gateway.virtual import VirtualNode

from .conftest import Mosquitto, NodeFactory, Subscriber, contiguous, mqtt_pub, wait_until

pytestmark = pytest.mark.integration


def assert_exactly_once(readings: list[dict[str, object]]) -> None:
    dup = [k for k, n in Counter((r["b"], r["s"]) for r in readings).items() if n > 1]
    assert not dup, f"readings delivered twice: {dup}"


def seqs_ok(sub: Subscriber, node: str, boot: int, at_least: int) -> list[int] | None:
    s = contiguous(sub.readings(node), boot)
    return s if len(s) >= at_least and s == list(range(len(s))) else None


async def test_readings_identity_birth_and_will(
    make_node: NodeFactory, subscriber: Subscriber, mosquitto: Mosquitto
) -> None:
    node = await make_node("vn1")
    await wait_until(lambda: len(subscriber.readings("vn1")) >= 4, what="4 readings")
    rs = subscriber.readings("vn1")
    assert {r["b"] for r in rs} == {1}
    assert [r["s"] for r in rs] == list(range(len(rs)))
    for r in rs:
        assert "t" not in r  # no time sync yet
        assert set(r["m"]) == {"temp_c", "rh_pct", "chip_temp_c"}
        assert -40 <= r["m"]["temp_c"] <= 80 and 0 <= r["m"]["rh_pct"] <= 100
        assert r["m"]["temp_c"] == round(r["m"]["temp_c"], 1)
    assert [r["u"] for r in rs] == sorted(r["u"] for r in rs)

    birth = subscriber.on("vn1", "status")[0].json()
    assert birth["state"] == "online" and birth["boot"] == 1 and birth["board"] == "pico_w"
    assert birth["ip"] == "127.0.0.1" and -90 <= birth["rssi"] <= -30
    assert birth["dropped"] == 0 and birth["fw"]
    assert birth["mem_free"] > 16000, "the firmware must leave room in a 128k heap"

    # a subscriber that comes later gets the birth as a retained message
    late = Subscriber(mosquitto.port, "late-sub")
    try:
        msg = await wait_until(lambda: late.on("vn1", "status"), what="retained status")
        assert msg[0].retained and msg[0].json()["state"] == "online"
    finally:
        late.close()

    # power loss: the broker publishes the retained last will; the next boot counts up
    await node.power_cycle()
    await wait_until(
        lambda: any(m.json() == {"state": "offline"} for m in subscriber.on("vn1", "status")),
        what="last will",
    )
    await wait_until(lambda: seqs_ok(subscriber, "vn1", 2, 2), what="boot 2 readings from s=0")
    fired = [e for e in node.events() if e["ev"] == "wdt_expired"]
    assert not fired, "watchdog fired while healthy"


async def test_broker_outage_replays_everything_in_order(
    make_node: NodeFactory, subscriber: Subscriber, mosquitto: Mosquitto
) -> None:
    node = await make_node("vn2")
    await wait_until(lambda: seqs_ok(subscriber, "vn2", 1, 2), what="first readings")
    mosquitto.stop()
    await wait_until(lambda: _ring_at_least(node, 5), timeout=15, what="ring filling")
    status = await node.console("status")
    assert status["ok"] and not status["mqtt"] and status["ring"] >= 5
    last_seq = status["seq"]
    mosquitto.start()
    await wait_until(
        lambda: seqs_ok(subscriber, "vn2", 1, last_seq + 3),
        timeout=30,
        what="backlog replayed and live readings after it",
    )
    rs = subscriber.readings("vn2")
    assert_exactly_once(rs)
    assert [r["s"] for r in rs] == list(range(len(rs))), "replay out of order"
    arrays = [m for m in subscriber.on("vn2", "readings") if m.payload.startswith("[")]
    assert arrays and max(len(m.json()) for m in arrays) >= 3, "backlog not sent as arrays"
    assert (await node.console("status"))["ring"] <= 1


def _ring_at_least(node: VirtualNode, n: int) -> bool:
    """Unsent records in the node's flash ring, counted from its files (as the firmware does)."""
    ring = node.fs / "ring"
    count = 0
    for log in ring.glob("*.log"):
        ack = ring / f"{log.stem}.ack"
        count += log.read_bytes().count(b"\n") - (ack.stat().st_size if ack.exists() else 0)
    return count >= n


async def test_reboot_during_outage_keeps_the_ring(
    make_node: NodeFactory, subscriber: Subscriber, mosquitto: Mosquitto
) -> None:
    node = await make_node("vn3")
    await wait_until(lambda: seqs_ok(subscriber, "vn3", 1, 1), what="first reading")
    mosquitto.stop()
    await wait_until(lambda: _ring_at_least(node, 4), timeout=15, what="ring filling")
    before = (await node.console("status"))["seq"]
    await node.power_cycle()  # power lost mid-outage
    await wait_until(
        lambda: _ring_at_least(node, before + 2),
        timeout=15,
        what="boot 2 appending to the surviving ring",
    )
    mosquitto.start()
    await wait_until(lambda: seqs_ok(subscriber, "vn3", 2, 3), timeout=30, what="boot 2 readings")
    await wait_until(
        lambda: seqs_ok(subscriber, "vn3", 1, before), timeout=10, what="every boot 1 reading"
    )
    rs = subscriber.readings("vn3")
    assert_exactly_once(rs)
    # order is kept across the reboot: all of boot 1 before any of boot 2
    boots = [r["b"] for r in rs]
    assert boots == sorted(boots)


async def test_commands_round_trip(
    make_node: NodeFactory, subscriber: Subscriber, mosquitto: Mosquitto
) -> None:
    node = await make_node("vn4")
    await wait_until(lambda: subscriber.on("vn4", "status"), what="birth")
    cmd = "roost/v1/vn4/cmd"

    def ack(cid: str) -> dict[str, object] | None:
        for m in subscriber.on("vn4", "cmd/ack"):
            if m.json().get("id") == cid:
                return m.json()  # type: ignore[no-any-return]
        return None

    epoch = int(time.time() * 1000)
    await mqtt_pub(mosquitto.port, cmd, {"id": "c1", "op": "time", "epoch_ms": epoch})
    assert await wait_until(lambda: ack("c1"), what="time ack") == {
        "id": "c1",
        "op": "time",
        "ok": True,
    }
    timed = await wait_until(
        lambda: [r for r in subscriber.readings("vn4") if "t" in r], what="timed reading"
    )
    assert abs(timed[0]["t"] - int(time.time() * 1000)) < 5000

    await mqtt_pub(mosquitto.port, cmd, {"id": "c2", "op": "set", "interval_s": 2})
    assert (await wait_until(lambda: ack("c2"), what="set ack"))["ok"] is True
    await mqtt_pub(mosquitto.port, cmd, {"id": "c3", "op": "set", "interval_s": "fast"})
    bad = await wait_until(lambda: ack("c3"), what="bad set ack")
    assert bad["ok"] is False and "interval_s" in str(bad["error"])
    await mqtt_pub(mosquitto.port, cmd, {"id": "c4", "op": "warp"})
    assert (await wait_until(lambda: ack("c4"), what="unknown op ack"))["ok"] is False
    n0 = len(subscriber.readings("vn4"))
    await wait_until(lambda: len(subscriber.readings("vn4")) >= n0 + 3, what="readings at 2 s")
    u = [r["u"] for r in subscriber.readings("vn4")[-2:]]
    assert 1800 <= u[1] - u[0] <= 2300, u

    await mqtt_pub(mosquitto.port, cmd, {"id": "c5", "op": "identify"})
    assert (await wait_until(lambda: ack("c5"), what="identify ack"))["ok"] is True
    await wait_until(
        lambda: len([e for e in node.events() if e["ev"] == "pin" and e["pin"] == "LED"]) >= 4,
        what="LED blinking",
    )

    await mqtt_pub(mosquitto.port, cmd, {"id": "c6", "op": "reboot"})
    assert (await wait_until(lambda: ack("c6"), what="reboot ack"))["ok"] is True
    await node.wait_boot(2)
    assert [e for e in node.events() if e["ev"] == "exit"][-1]["code"] == 42
    births = await wait_until(
        lambda: [m.json() for m in subscriber.on("vn4", "status") if m.json().get("boot") == 2],
        what="boot 2 birth",
    )
    assert births[0]["interval_s"] == 2, "the set interval must survive the reboot"


async def test_watchdog_reset_recovers(make_node: NodeFactory, subscriber: Subscriber) -> None:
    node = await make_node("vn5")
    await wait_until(lambda: seqs_ok(subscriber, "vn5", 1, 1), what="first reading")
    assert (await node.console("hang"))["ok"]
    await node.wait_boot(2, timeout=15)
    wdt = [e for e in node.events() if e["ev"] == "wdt_expired"]
    assert wdt and wdt[0]["timeout_ms"] == 3000
    await wait_until(lambda: seqs_ok(subscriber, "vn5", 2, 2), what="readings after the reset")
    status = await node.console("status")
    assert status["boot"] == 2 and status["safe"] is False


async def test_boot_loop_guard_enters_safe_mode(
    make_node: NodeFactory, subscriber: Subscriber
) -> None:
    node = await make_node("vn6", safe_after=2)
    await wait_until(lambda: subscriber.on("vn6", "status"), what="birth")
    for boot in (1, 2):
        # an unhandled error inside the firmware, twice in a row within a few seconds of boot
        assert (await node.console("crash"))["ok"]
        await node.wait_boot(boot + 1, timeout=15)
    status = await node.console("status")
    assert status["boot"] == 3 and status["safe"] is True
    birth = await wait_until(
        lambda: [m.json() for m in subscriber.on("vn6", "status") if m.json().get("boot") == 3],
        what="safe-mode birth",
    )
    assert birth[0]["state"] == "safe_mode"
    assert (await node.console("sample"))["ok"] is False  # safe mode has no sensors
    assert not [r for r in subscriber.readings("vn6") if r["b"] == 3]
    assert "crash requested on the console" in node.console_log.read_text()


async def test_console_protocol_sensor_fault_and_wifi_outage(
    make_node: NodeFactory, subscriber: Subscriber
) -> None:
    node = await make_node(
        "vn7", sensors=[{"type": "dht22"}, {"type": "chip_temp"}, {"type": "pir"}]
    )
    await wait_until(lambda: seqs_ok(subscriber, "vn7", 1, 1), what="first reading")
    assert set(subscriber.readings("vn7")[0]["m"]) == {"temp_c", "rh_pct", "chip_temp_c", "motion"}
    st = await node.console("status")
    assert st["ok"] and st["cmd"] == "status" and st["node_id"] == "vn7" and st["mqtt"]
    assert (await node.console("inject temp_c 42.5"))["ok"]
    seq = (await node.console("sample"))["seq"]
    injected = await wait_until(
        lambda: [r for r in subscriber.readings("vn7") if r["s"] == seq], what="injected"
    )
    assert injected[0]["m"]["temp_c"] == 42.5
    assert await node.console("frobnicate") == {
        "ok": False,
        "error": "unknown command",
        "cmd": "frobnicate",
    }

    # motion is published at once when the PIR pin changes
    node.set_control(pins={"16": 1})
    await wait_until(
        lambda: [r for r in subscriber.readings("vn7") if r["m"] == {"motion": 1}],
        what="motion event",
    )

    # a sensor that stops answering leaves its metrics out and is counted; the node goes on
    node.set_control(dht="fail")
    after = (await node.console("status"))["seq"]
    await wait_until(
        lambda: [
            r
            for r in subscriber.readings("vn7")
            if r["s"] > after and "chip_temp_c" in r["m"] and "temp_c" not in r["m"]
        ],
        what="reading without the DHT22",
    )
    assert (await node.console("status"))["sensor_errors"] >= 1
    node.set_control(dht="ok")

    # Wi-Fi outage from the console: offline will, then replay after it comes back
    assert (await node.console("wifi down"))["ok"]
    await wait_until(
        lambda: any(m.json() == {"state": "offline"} for m in subscriber.on("vn7", "status")),
        what="last will on Wi-Fi loss",
    )
    await wait_until(lambda: _ring_at_least(node, 3), what="buffering while Wi-Fi is down")
    assert (await node.console("wifi up"))["ok"]
    down_seq = (await node.console("status"))["seq"]
    await wait_until(
        lambda: seqs_ok(subscriber, "vn7", 1, down_seq + 1),
        timeout=20,
        what="replay after Wi-Fi returns",
    )
    assert_exactly_once(subscriber.readings("vn7"))


async def test_bme280_over_i2c_on_esp32(make_node: NodeFactory, subscriber: Subscriber) -> None:
    await make_node("vn8", board="esp32", sensors=[{"type": "bme280"}, {"type": "chip_temp"}])
    await wait_until(lambda: seqs_ok(subscriber, "vn8", 1, 2), what="readings")
    r = subscriber.readings("vn8")[0]["m"]
    assert set(r) == {"temp_c", "rh_pct", "pressure_hpa", "chip_temp_c"}
    assert 900 < r["pressure_hpa"] < 1100 and 10 < r["temp_c"] < 35 and 0 < r["rh_pct"] < 100
    birth = subscriber.on("vn8", "status")[0].json()
    assert birth["board"] == "esp32"

"""Sensor faults as the real drivers raise them (the fakes follow micropython-lib's dht and the
ports' I2C): one bad sensor costs its metrics in that reading, is counted, and never resets the
node."""

from __future__ import annotations

import pytest

from .conftest import NodeFactory, Subscriber, wait_until

pytestmark = pytest.mark.integration


def boots(node: object) -> list[dict[str, object]]:
    return [e for e in node.events() if e["ev"] == "boot"]  # type: ignore[attr-defined]


async def test_dht_checksum_error_is_counted_not_a_reset(
    make_node: NodeFactory, subscriber: Subscriber
) -> None:
    node = await make_node("sf1")
    await wait_until(lambda: subscriber.readings("sf1"), what="first reading")
    node.set_control(dht="checksum")  # micropython-lib's dht: Exception("checksum error")
    before = (await node.console("status"))["seq"]
    await wait_until(
        lambda: [r for r in subscriber.readings("sf1") if r["s"] > before + 2],
        what="readings while the DHT22 sends bad frames",
    )
    rs = [r for r in subscriber.readings("sf1") if r["s"] > before + 1]
    assert rs and all("temp_c" not in r["m"] and "chip_temp_c" in r["m"] for r in rs), rs
    status = await node.console("status")
    assert status["boot"] == 1 and status["sensor_errors"] >= 2
    assert len(boots(node)) == 1, "a checksum error reset the node"
    node.set_control(dht="ok")
    await wait_until(
        lambda: [r for r in subscriber.readings("sf1") if r["s"] > status["seq"] + 2
                 and "temp_c" in r["m"]],
        what="the DHT22 back in the readings",
    )


async def test_dht22_is_not_read_faster_than_every_2_s(
    make_node: NodeFactory, subscriber: Subscriber
) -> None:
    """At interval_s 1 the node samples twice per DHT22 period: the driver must not ask the sensor
    again within 2 s (the fake, like the sensor, does not answer then)."""
    node = await make_node("sf2", interval_s=1)
    await wait_until(lambda: len(subscriber.readings("sf2")) >= 6, what="6 readings")
    status = await node.console("status")
    assert status["sensor_errors"] == 0, status
    assert all("temp_c" in r["m"] for r in subscriber.readings("sf2"))

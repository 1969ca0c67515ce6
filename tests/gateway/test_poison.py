"""The poison-message breaker (issue 13): a message that kills the gateway process in a way no
handler sees (SIGKILL from inside, while ingest handles it, as a segfault or the OOM killer
would) is redelivered by the broker after each restart; after ``ingest.poison_after`` deaths it
is quarantined unprocessed and the crash loop ends. Real processes, a real mosquitto."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.broker.managed import ManagedBroker
from tests.conftest import wait_for
from tests.gateway.helpers import count, publish_all, reading

pytestmark = pytest.mark.integration

MARK = "KILLS-THE-GATEWAY"


async def exits(gw, timeout: float = 30) -> int | None:  # type: ignore[no-untyped-def]
    """The process's exit status once it died by itself, or None if it is still up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        code = gw.proc.poll()
        if code is not None:
            return int(code)
        await asyncio.sleep(0.05)
    return None


@pytest.mark.parametrize("poison_after", [2, 3])
async def test_a_message_that_kills_the_gateway_ends_in_quarantine(
    broker: ManagedBroker, gateway_process, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, poison_after: int,
) -> None:
    monkeypatch.setenv("ROOST_FAILPOINT_KILL_ON", MARK)
    monkeypatch.setenv("ROOST_INGEST_POISON_AFTER", str(poison_after))
    gw = gateway_process("--mqtt-url", broker.url)
    d = gw.data_dir
    gw.start()
    await wait_for(lambda: "connected to broker" in gw.log_text(), what="gateway connected")
    poison = (b'{"b":1,"s":5,"u":5000,"m":{"temp_c":1.0},"x":"' + MARK.encode() + b'"}')
    items = [("roost/v1/n1/readings", reading(1, s)) for s in range(5)]
    items += [("roost/v1/n1/readings", poison)]
    items += [("roost/v1/n1/readings", reading(1, s)) for s in range(6, 40)]
    publishing = asyncio.create_task(publish_all(broker.port, "pub", items, window=1))
    deaths = 0
    for _ in range(poison_after + 2):  # systemd's Restart=always, a few times at most
        code = await exits(gw, timeout=30)
        if code is None:
            break
        assert code == -9, gw.log_text()[-3000:]
        deaths += 1
        gw.start()
    await publishing
    await wait_for(lambda: count(d, "SELECT count(*) FROM messages") == 39, timeout=30,
                   what="every good reading stored")
    assert deaths == poison_after, gw.log_text()[-3000:]
    assert gw.proc.poll() is None
    assert gw.terminate() == 0
    db = sqlite3.connect(d / "roost.sqlite3")
    rows = db.execute("SELECT reason, raw FROM quarantine").fetchall()
    assert len(rows) == 1 and rows[0][1] == poison
    want = f"poison: the gateway died {poison_after} times while handling this message"
    assert rows[0][0] == want
    assert db.execute("SELECT count(*) FROM poison").fetchone() == (0,)  # nothing left charged
    assert db.execute("SELECT value FROM ingest_state").fetchone() == (0,)  # a clean stop
    assert f"{poison_after} times: quarantined unprocessed" in gw.log_text()


async def test_a_clean_restart_is_not_suspicious(
    broker: ManagedBroker, gateway_process,  # type: ignore[no-untyped-def]
) -> None:
    gw = gateway_process("--mqtt-url", broker.url)
    gw.start()
    await wait_for(lambda: "connected to broker" in gw.log_text(), what="gateway connected")
    assert gw.terminate() == 0
    gw.start()
    await wait_for(lambda: gw.log_text().count("connected to broker") == 2, what="reconnected")
    assert gw.terminate() == 0
    assert "did not stop cleanly" not in gw.log_text()
    gw.start()
    await wait_for(lambda: gw.log_text().count("connected to broker") == 3, what="reconnected")
    gw.kill()
    gw.start()
    await wait_for(lambda: "did not stop cleanly" in gw.log_text(), what="the unclean stop seen")
    assert gw.terminate() == 0

"""Tokens: commands need the admin token; reading needs one only when read auth is on."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from gateway.mqtt.client import Connection, ConnectOptions
from tests.api.conftest import Running, StartGateway
from tests.api.fleet import reading_now, status
from tests.conftest import wait_for
from tests.gateway.helpers import db

pytestmark = pytest.mark.integration


async def test_commands_need_the_admin_token(running: Running) -> None:
    await running.publish([status("kitchen", "pico_w"), reading_now("kitchen", 0, temp_c=20.0)])
    await running.wait_stored(1)
    node = await Connection.open(ConnectOptions("127.0.0.1", running.broker.port, "kitchen-node",
                                                clean_start=True, session_expiry=0))
    await node.subscribe([("roost/v1/kitchen/cmd", 0)])
    url = "/api/nodes/kitchen/commands"
    async with running.client() as c:
        assert (await c.post(url, json={"op": "identify"})).status_code == 401
        wrong = await c.post(url, json={"op": "identify"}, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert "admin token" in wrong.json()["detail"]
        auth = {"Authorization": f"Bearer {running.token}"}
        bad = await c.post(url, json={"op": "set", "interval_s": 0}, headers=auth)
        assert bad.status_code == 400
        unknown = await c.post("/api/nodes/nobody/commands", json={"op": "reboot"}, headers=auth)
        assert unknown.status_code == 404
        r = await c.post(url, json={"op": "set", "interval_s": 10}, headers=auth)
        assert r.status_code == 202, r.text
        sent = r.json()
        # The node gets it on its cmd topic, with the id the API returned.
        got = []

        async def cmds() -> bool:
            got.extend(json.loads(p.payload) for p in await node.messages()
                       if p.topic == "roost/v1/kitchen/cmd")
            return any(g.get("op") == "set" for g in got)

        await wait_for(cmds, what="command on the node's topic")
        cmd = next(g for g in got if g.get("op") == "set")
        assert cmd == {"id": sent["id"], "op": "set", "interval_s": 10}
        # The node acknowledges; the command list shows both halves.
        await running.publish([("roost/v1/kitchen/cmd/ack",
                                json.dumps({"id": sent["id"], "ok": True}).encode())])

        async def acked() -> bool:
            rows = (await c.get("/api/nodes/kitchen/commands")).json()
            return any(x["id"] == sent["id"] and x["ok"] is True and x["op"] == "set"
                       for x in rows)

        await wait_for(acked, what="ack recorded")
    await node.close()
    row = db(running.data_dir).execute(
        "SELECT op, body, sent_at IS NOT NULL FROM commands WHERE id = ?", (sent["id"],)
    ).fetchone()
    assert row == ("set", '{"op":"set","interval_s":10}', 1)


async def test_read_auth(start_gateway: StartGateway) -> None:
    running = await start_gateway(read_auth=True, read_token="reader-secret")
    async with running.client() as c:
        assert (await c.get("/api/nodes")).status_code == 401
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/api/health")).status_code == 200  # probes stay open
        assert (await c.get("/")).status_code == 200  # the page asks for a token itself
        ok = {"Authorization": "Bearer reader-secret"}
        assert (await c.get("/api/nodes", headers=ok)).status_code == 200
        assert (await c.get("/api/nodes", params={"token": "reader-secret"})).status_code == 200
        admin = {"Authorization": f"Bearer {running.token}"}
        assert (await c.get("/api/stats", headers=admin)).status_code == 200
        # The read token cannot change anything.
        r = await c.post("/api/nodes/x/commands", json={"op": "reboot"}, headers=ok)
        assert r.status_code == 401
    with pytest.raises((InvalidStatus, WebSocketException)):
        async with asyncio.timeout(10), connect(f"{running.ws}/ws/live") as ws:
            await ws.recv()
    async with connect(f"{running.ws}/ws/live?token=reader-secret") as ws:
        assert json.loads(await ws.recv())["type"] == "backfill"


async def test_admin_token_is_generated_once_and_kept(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    path = running.data_dir / "admin_token"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(running.token) >= 32

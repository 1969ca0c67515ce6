"""REST endpoints against a running gateway with a real SQLite store and a real broker."""

from __future__ import annotations

import csv
import io
import time

import pytest

from tests.api.conftest import Running, StartGateway
from tests.api.fleet import ROOMS, history
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def fleet(start_gateway: StartGateway) -> Running:
    gw = await start_gateway()
    items = history(minutes=60, step_s=30)
    await gw.publish(items)
    await gw.wait_stored(sum(1 for t, _ in items if t.endswith("/readings")))
    return gw


async def test_health_and_stats(fleet: Running) -> None:
    async with fleet.client() as c:
        r = await c.get("/api/health")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "store_writable": True, "broker_connected": True,
                            "detail": [], "firstboot_error": False}
        st = (await c.get("/api/stats")).json()
    assert st["store"]["stored"] == 359 and st["store"]["rows"] == 718
    assert st["store"]["seq_gaps"] == 1
    assert st["ingest"]["connected"] is True
    assert sum(v for _, v in st["ingest"]["history"]) > 0
    assert st["disk"]["free_bytes"] > 0 and st["disk"]["store_bytes"] > 0
    assert st["budget"]["paused"] is False and st["budget"]["pauses"] == 0
    assert st["firstboot_error"] is None
    assert st["cold"] == {"reads": 0, "errors": 0, "seconds": 0.0, "last_error": None}


async def test_health_is_503_when_broker_is_gone(fleet: Running) -> None:
    await fleet.broker.stop()
    await wait_for(lambda: not fleet.gateway.ingest.state.connected, what="link down")
    async with fleet.client() as c:
        r = await c.get("/api/health")
    assert r.status_code == 503
    body = r.json()
    assert body["broker_connected"] is False and body["store_writable"] is True
    assert any(d.startswith("broker:") for d in body["detail"])


async def test_nodes_latest_and_completeness(fleet: Running) -> None:
    async with fleet.client() as c:
        nodes = (await c.get("/api/nodes")).json()
        cellar = (await c.get("/api/nodes/cellar")).json()
        missing = await c.get("/api/nodes/nope")
    assert [n["node_id"] for n in nodes] == sorted(ROOMS)
    kitchen = next(n for n in nodes if n["node_id"] == "kitchen")
    assert kitchen["status"] == "online" and kitchen["board"] == "pico_w"
    assert set(kitchen["latest"]) == {"temp_c", "rh_pct"}
    assert kitchen["completeness"]["pct"] == 100.0
    # One of the cellar's 120 messages never arrived.
    assert cellar["lost"] == 1
    assert cellar["completeness"]["received"] == 119
    assert cellar["completeness"]["expected"] == 120
    assert cellar["completeness"]["pct"] == pytest.approx(99.17, abs=0.01)
    assert missing.status_code == 404 and "node_id" in missing.json()["detail"]


async def test_series_buckets(fleet: Running) -> None:
    now = int(time.time() * 1000)
    async with fleet.client() as c:
        r = await c.get("/api/series", params={"node": "kitchen", "metric": "temp_c",
                                               "start": now - 7_200_000, "end": now,
                                               "bucket": "10m"})
        auto = await c.get("/api/series", params={"start": "-1h", "points": 30})
        iso = await c.get("/api/series", params={
            "node": "kitchen,greenhouse", "metric": "rh_pct",
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 - 3600))})
    body = r.json()
    assert body["bucket_ms"] == 600_000
    (s,) = body["series"]
    assert (s["node"], s["metric"]) == ("kitchen", "temp_c")
    assert sum(s["count"]) == 120
    assert all(t % 600_000 == 0 for t in s["t"])
    assert all(lo <= a <= hi for lo, a, hi in zip(s["min"], s["avg"], s["max"], strict=True))
    assert auto.json()["bucket_ms"] == 120_000  # 1 h / 30 points -> the 2 min bucket
    assert len(auto.json()["series"]) == 6
    assert {(x["node"], x["metric"]) for x in iso.json()["series"]} == {
        ("kitchen", "rh_pct"), ("greenhouse", "rh_pct")}


async def test_readings_pages_cover_everything_once(fleet: Running) -> None:
    seen = []
    cursor = None
    pages = 0
    async with fleet.client() as c:
        while True:
            params = {"node": "cellar", "start": "-2h", "limit": 50}
            if cursor:
                params["cursor"] = cursor
            body = (await c.get("/api/readings", params=params)).json()
            pages += 1
            seen += [(r["seq"], r["metric"]) for r in body["readings"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert pages == 5  # 238 rows in pages of 50
    assert len(seen) == len(set(seen)) == 238
    assert 17 not in {s for s, _ in seen}


async def test_export_csv_streams_every_row(fleet: Running) -> None:
    async with fleet.client() as c:
        r = await c.get("/api/export", params={"node": "greenhouse", "start": "-2h"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 240
    assert {row["metric"] for row in rows} == {"temp_c", "rh_pct"}


async def test_export_parquet(fleet: Running) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    async with fleet.client() as c:
        r = await c.get("/api/export", params={"start": "-2h", "format": "parquet"})
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 718
    assert table.column_names == ["ts", "node_id", "metric", "value", "boot", "seq", "received",
                                  "flags"]


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [
        ("/api/series", {"start": "yesterday"}, "start"),
        ("/api/series", {"end": "2025-13-45"}, "end"),
        ("/api/series", {"start": "-1h", "end": "-2h"}, "end"),
        ("/api/series", {"bucket": "fortnight"}, "bucket"),
        ("/api/series", {"bucket": "1ms", "start": "-30d"}, "bucket"),
        ("/api/series", {"points": "3"}, "points"),
        ("/api/series", {"node": "bad name!"}, "node"),
        ("/api/readings", {"limit": "lots"}, "limit"),
        ("/api/readings", {"limit": "0"}, "limit"),
        ("/api/readings", {"cursor": "abc"}, "cursor"),
        ("/api/export", {"format": "xlsx"}, "format"),
        ("/api/nodes", {"hours": "-1"}, "hours"),
        ("/api/quarantine", {"limit": "x"}, "limit"),
    ],
)
async def test_bad_parameters_are_400_naming_them(running: Running, path: str,
                                                  params: dict[str, str], name: str) -> None:
    async with running.client() as c:
        r = await c.get(path, params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["detail"].startswith(f"{name}:"), body
    assert body["extra"]["parameter"] == name


async def test_quarantine_lists_bad_inputs(running: Running) -> None:
    await running.publish([("roost/v1/n1/readings", b"not json at all")])
    await wait_for(lambda: running.gateway.writer.transactions > 0)
    async with running.client() as c:
        await wait_for(lambda: c.get("/api/quarantine"), what="quarantine")
        rows = (await c.get("/api/quarantine")).json()
    assert rows[0]["topic"] == "roost/v1/n1/readings"
    assert rows[0]["raw"] == "not json at all"
    assert rows[0]["reason"]


async def test_metrics_prometheus_text(fleet: Running) -> None:
    async with fleet.client() as c:
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = dict(
        line.rsplit(" ", 1) for line in r.text.splitlines() if line and not line.startswith("#")
    )
    assert float(lines["roost_store_stored_total"]) == 359
    assert float(lines["roost_ingest_connected"]) == 1
    assert float(lines["roost_ws_clients"]) == 0
    assert "roost_store_seq_gaps_total" in lines
    assert float(lines["roost_budget_paused"]) == 0
    assert float(lines["roost_api_cold_reads_total"]) == 0
    assert float(lines["roost_api_cold_read_errors_total"]) == 0
    # the hardening counters: the fleet's v1 nodes got committed marks, nothing was poison
    assert float(lines["roost_ingest_marks_sent_total"]) >= 1
    assert float(lines["roost_ingest_poison_quarantined_total"]) == 0
    assert float(lines["roost_store_isolated_total"]) == 0


async def test_openapi_and_docs_pages_work_offline(running: Running) -> None:
    async with running.client() as c:
        spec = (await c.get("/schema/openapi.json")).json()
        page = (await c.get("/schema/swagger")).text
        js = await c.get("/assets/vendor/swagger/swagger-ui-bundle.js")
        index = await c.get("/")
    assert spec["openapi"].startswith("3.1")
    assert {"/api/series", "/api/readings", "/api/nodes/{node_id}/commands"} <= set(spec["paths"])
    assert "http://" not in page and "https://" not in page  # no CDN
    assert js.status_code == 200 and len(js.content) > 100_000
    assert index.status_code == 200 and "/assets/app.js" in index.text


async def test_errors_are_json(running: Running) -> None:
    async with running.client() as c:
        r = await c.get("/api/nothing-here")
    assert r.status_code == 404
    assert r.json()["status_code"] == 404

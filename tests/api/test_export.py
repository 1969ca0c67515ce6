"""``/api/export?format=parquet`` from a real ``roost run`` process: the file is the dataset's
layout and pyarrow, which encodes it in a process of its own, never enters the gateway."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for
from tests.gateway.helpers import counter, publish_all

pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.integration


def mapped(pid: int, name: str) -> bool:
    return name in Path(f"/proc/{pid}/maps").read_text()


async def test_parquet_export_streams_without_pyarrow_in_the_gateway(
    gateway_process, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    mqtt, http = free_port(), free_port()
    gw = gateway_process("--mqtt-port", str(mqtt), "--http-host", "127.0.0.1",
                         "--http-port", str(http))  # fmt: skip
    gw.start()
    base = f"http://127.0.0.1:{http}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:

        async def up() -> bool:
            try:
                return (await c.get("/api/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, timeout=60, what="the gateway's API")
        items = [
            (f"roost/v1/{node}/readings",
             json.dumps({"b": 1, "s": s, "t": 1_763_812_345_000 + s * 1000,
                         "m": {"temp_c": 20 + s / 10, "rh_pct": 40.0}}).encode())
            for node in ("exp-a", "exp-b") for s in range(300)
        ]  # fmt: skip
        assert await publish_all(mqtt, "export-test", items) == 0
        await wait_for(lambda: counter(gw.data_dir, "stored") >= 600, what="600 stored")
        r = await c.get("/api/export", params={"start": "1763812345000",
                                               "end": "1763812700000", "format": "parquet"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/vnd.apache.parquet")
        table = pq.read_table(io.BytesIO(r.content))
        assert table.num_rows == 1200
        assert table.column_names == ["ts", "node_id", "metric", "value", "boot", "seq",
                                      "received", "flags"]  # fmt: skip
        assert str(table.schema.field("ts").type) == "timestamp[ms, tz=UTC]"
        rows = table.to_pylist()
        assert {(x["node_id"], x["seq"]) for x in rows} == {
            (n, s) for n in ("exp-a", "exp-b") for s in range(300)
        }
        # The encoder has exited, and the gateway never mapped Arrow's libraries.
        assert gw.proc is not None
        assert not mapped(gw.proc.pid, "libarrow") and not mapped(gw.proc.pid, "pyarrow")
        assert (await c.get("/api/health")).status_code == 200
    assert gw.terminate() == 0

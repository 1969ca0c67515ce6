"""Schemathesis generates requests from /schema/openapi.json: no input may cause a 5xx.

The gateway runs as ``roost run`` (its own managed broker) in a child process, with a few nodes'
data so queries have something to chew on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    http, mqtt = free_port(), free_port()
    log = (tmp / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--data-dir", str(tmp / "data"),
         "--mqtt-port", str(mqtt), "--http-host", "127.0.0.1", "--http-port", str(http)],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=tmp,
    )
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                (tmp / "gateway.log").read_text())
            time.sleep(0.2)
        for s in range(20):
            body = json.dumps({"b": 1, "s": s, "u": s, "m": {"temp_c": 20.0 + s, "rh_pct": 40}})
            subprocess.run(["mosquitto_pub", "-p", str(mqtt), "-q", "1", "-t",
                            f"roost/v1/n{s % 3}/readings", "-m", body], check=True)
        token = (tmp / "data" / "admin_token").read_text().strip()
        yield base, token
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        text = (tmp / "gateway.log").read_text(errors="replace")
        assert "Traceback" not in text, text[-4000:]


@pytest.fixture(scope="module")
def api_schema(served: tuple[str, str]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(served[0] + "/schema/openapi.json")


def test_no_server_errors(api_schema: schemathesis.BaseSchema, served: tuple[str, str]) -> None:
    base, token = served
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            # With the admin token, command bodies get past the guard and into validation.
            case.call_and_validate(base_url=base, checks=[not_a_server_error],
                                   headers={"Authorization": f"Bearer {token}"})

        check()


def test_schema_is_served_for_every_route(api_schema: schemathesis.BaseSchema) -> None:
    paths = {op.ok().path for op in api_schema.get_all_operations()}
    assert "/api/export" in paths and "/metrics" in paths
    assert "/ws/live" not in paths  # WebSocket routes are documented in docs/api.md instead

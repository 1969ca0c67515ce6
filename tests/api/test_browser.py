"""The dashboard in a real browser: Debian's Chromium driven by Playwright, no browser download.

The gateway runs in-process, fed through a real mosquitto. Screenshots go to
``<tmp>/screenshots`` and, with ROOST_SCREENSHOTS=DIR, to DIR as well (docs/dashboard.png is made
that way: ``ROOST_SCREENSHOTS=docs pytest tests/api/test_browser.py``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api.app import STATIC
from tests.api.conftest import Running, StartGateway
from tests.api.fleet import ROOMS, history, reading_now

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if not Path(CHROMIUM).exists():  # setup.sh --test installs it
    pytest.fail(f"no Chromium at {CHROMIUM}: run ./setup.sh --test", pytrace=False)
if not (STATIC / "index.html").exists():
    pytest.fail("the dashboard is not built: run ./setup.sh", pytrace=False)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def fleet(start_gateway: StartGateway) -> Running:
    gw = await start_gateway()
    items = history()
    await gw.publish(items)
    await gw.wait_stored(sum(1 for t, _ in items if t.endswith("/readings")))
    await gw.publish([("roost/v1/kitchen/readings", b'{"b":3,"s":"oops"}')])  # quarantined
    return gw


def shots(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path / "screenshots"]
    if os.environ.get("ROOST_SCREENSHOTS"):
        dirs.append(Path(os.environ["ROOST_SCREENSHOTS"]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


async def snap(page: Any, tmp_path: Path, name: str) -> None:
    for d in shots(tmp_path):
        await page.screenshot(path=str(d / name), full_page=False)


async def test_overview_shows_nodes_and_live_reading(browser: Any, fleet: Running,
                                                     tmp_path: Path) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.goto(fleet.base + "/")
    for room in ROOMS:
        await page.locator(f'.card[data-node="{room}"]').wait_for(timeout=15_000)
    # Sparklines drawn from the last hour's series.
    spark = page.locator('.card[data-node="kitchen"] .metric[data-metric="temp_c"] svg')
    assert int(await spark.get_attribute("data-points") or 0) > 10
    await page.locator(".live.on").wait_for(timeout=15_000)
    # A new reading is pushed to the page: the value on the card changes to it.
    await fleet.publish([reading_now("kitchen", 120, temp_c=33.3, rh_pct=50.0)])
    value = page.locator('.card[data-node="kitchen"] .metric[data-metric="temp_c"] [data-value]')
    await page.wait_for_function(
        "el => el.textContent === '33.3'", arg=await value.element_handle(), timeout=15_000
    )
    # The cellar lost one message in the last hour: its completeness is below 100 %.
    cellar = await page.locator('.card[data-node="cellar"] .foot span').first.text_content()
    assert cellar is not None and cellar.endswith("%") and float(cellar[:-2]) < 100
    await snap(page, tmp_path, "dashboard.png")
    # Offline: everything the page loaded came from the gateway itself.
    assert requests and all(u.startswith((fleet.base, fleet.ws)) for u in requests)
    # A phone, in dark mode.
    phone = await browser.new_page(viewport={"width": 390, "height": 844}, color_scheme="dark",
                                   device_scale_factor=2)
    await phone.goto(fleet.base + "/")
    await phone.locator('.card[data-node="kitchen"]').wait_for(timeout=15_000)
    bg = await phone.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg != "rgb(244, 246, 248)"  # the dark palette, not the light one
    await snap(phone, tmp_path, "dashboard-phone-dark.png")


async def test_node_chart_renders_points(browser: Any, fleet: Running, tmp_path: Path) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(fleet.base + "/#/node/greenhouse")
    chart = page.locator('[data-chart="temp_c"]')
    await page.wait_for_function(
        "() => Number(document.querySelector('[data-chart=\"temp_c\"]')?.dataset.points) > 10",
        timeout=15_000,
    )
    # The canvas really has a line on it: some pixels differ from the first one.
    drawn = await page.evaluate(
        """() => {
          const c = document.querySelector('[data-chart="temp_c"] canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) n++;
          return n;
        }"""
    )
    assert drawn > 500
    # Compare two nodes on one chart: the kitchen's series joins the greenhouse's.
    before = int(await chart.get_attribute("data-points") or 0)
    await page.click('button[data-compare="kitchen"]')
    await page.wait_for_function(
        "() => Number(document.querySelector('[data-chart=\"temp_c\"]').dataset.points)"
        f" > {before}",
        timeout=15_000,
    )
    await snap(page, tmp_path, "node.png")
    await page.goto(fleet.base + "/#/health")
    await page.locator('[data-tile="rate"]').wait_for(timeout=15_000)
    assert "oops" in (await page.content()) or "quarantine" in (await page.content()).lower()
    # The node page's feed was closed on purpose: the badge must not claim a reconnect.
    await page.wait_for_timeout(500)
    assert "reconnecting" not in (await page.locator("#live").inner_text())
    await snap(page, tmp_path, "health.png")


async def test_budget_pause_and_firstboot_error_are_shown_loudly(
    browser: Any, fleet: Running, tmp_path: Path
) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(fleet.base + "/")
    await page.locator('.card[data-node="kitchen"]').wait_for(timeout=15_000)
    # Neither state holds yet: no banner.
    assert await page.locator("[data-alert]").count() == 0
    # The budget pauses ingest (as gateway/rollup/budget.py records it) and first boot refused
    # the boot partition's roost.toml (as gateway/firstboot.py writes it).
    writer = fleet.gateway.writer
    assert writer is not None
    since = int(time.time() * 1000) - 90_000
    await writer.execute(
        lambda c: c.execute(
            "INSERT OR REPLACE INTO rollup_state VALUES ('budget_paused_since', ?)", (since,)
        )
    )
    reason = "roost.toml: [wifi] psk must be 8 to 63 characters (line 4)"
    (fleet.data_dir / "firstboot-error.txt").write_text(reason + "\n")
    await page.reload()
    budget = page.locator('[data-alert="budget"]')
    await budget.wait_for(timeout=15_000)
    assert "Ingest paused" in (await budget.text_content() or "")
    first = page.locator('[data-alert="firstboot"]')
    await first.wait_for(timeout=15_000)
    assert reason in (await first.text_content() or "")
    # Loud: the banner is drawn in the "bad" colour, not plain text.
    border = await budget.evaluate("el => getComputedStyle(el).borderTopColor")
    assert border not in ("rgba(0, 0, 0, 0)", "rgb(0, 0, 0)")
    async with fleet.client() as c:
        assert (await c.get("/api/health")).json()["firstboot_error"] is True
    # The health page shows the budget tile and the (empty) sync state too, with the banners.
    await page.goto(fleet.base + "/#/health")
    await page.locator('[data-tile="budget"] .pill.offline').wait_for(timeout=15_000)
    await page.locator("[data-sinks]").wait_for(timeout=15_000)
    assert await page.locator('[data-alert="budget"]').count() == 1
    await snap(page, tmp_path, "alerts.png")
    # Resolved: the banners go at the next refresh.
    await writer.execute(
        lambda c: c.execute("DELETE FROM rollup_state WHERE name = 'budget_paused_since'")
    )
    (fleet.data_dir / "firstboot-error.txt").unlink()
    await page.reload()
    await page.locator('[data-tile="budget"] .pill.online').wait_for(timeout=15_000)
    assert await page.locator("[data-alert]").count() == 0


async def test_sink_that_cannot_deliver_is_shown_on_every_page(
    browser: Any, gateways: Any, tmp_path: Path
) -> None:
    from tests.conftest import free_port

    port, dead = free_port(), free_port()  # nothing listens on ``dead``: the sink backs off
    gw = await gateways.start(
        f'[[sinks]]\nname = "cloud"\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:{dead}"\n',
        data_dir=tmp_path / "data",
        overrides={"http": {"host": "127.0.0.1", "port": port}},
        ready=lambda g: g.api is not None and g.api.bound.is_set(),
    )
    assert gw.api is not None
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"http://127.0.0.1:{port}/")
    banner = page.locator('[data-alert="sync"]')
    # The runner records its state as it backs off; the banner follows within a refresh or two.
    for _ in range(6):
        await page.reload()
        try:
            await page.wait_for_function(
                "() => /backoff/.test(document.querySelector('[data-alert=\"sync\"]')"
                "?.textContent || '')",
                timeout=5_000,
            )
            break
        except Exception:
            continue
    text = await banner.text_content() or ""
    assert "cloud" in text and "backoff" in text
    await page.goto(f"http://127.0.0.1:{port}/#/health")
    await page.locator('[data-sink="cloud"] .pill.stale').wait_for(timeout=15_000)

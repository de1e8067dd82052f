"""The operations dashboard at ``/dashboard`` in Chromium, and its ``/dashboard/data`` endpoint."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.browser.support import UPDATE_DOCS, missing, publish, screenshot_path
from tests.support.stack import API_KEY, Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

reason = missing()
if reason:
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def _read_in_background(stack: Stack, count: int, **body: object) -> list[threading.Thread]:
    """Start ``count`` generations and read each over SSE in a thread (delivery latency is measured on reads)."""
    threads = []
    for _ in range(count):
        gen = stack.create(**body)
        thread = threading.Thread(target=stack.events, args=(gen,), daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def test_the_dashboard_draws_live_charts(page: Page, stack: Stack) -> None:
    # Given a dashboard open with the API key, and traffic: readers of synthetic generations
    page.goto(f"/dashboard#key={API_KEY}")
    page.wait_for_selector("#models tr")  # the first statistics: the baseline that new failures are counted from
    readers = _read_in_background(
        stack, 4, model="synthetic", prompt="load", max_tokens=120, options={"tokens_per_second": 30}
    )
    readers += _read_in_background(stack, 1, model="synthetic", prompt="bad", options={"fail_after_tokens": 3})

    # Then /readyz is shown, with its checks
    page.wait_for_function("document.getElementById('overall').dataset.status !== 'unknown'")
    assert page.get_attribute("#overall", "data-status") in ("healthy", "degraded")
    assert page.inner_text("#consumers-alive").isdigit()
    assert page.locator("#checks li").count() >= 3

    # And both charts draw lines from /metrics, refreshed every 2 s
    page.wait_for_function(
        """() => ['tokens-chart', 'latency-chart'].every(id =>
            [...document.querySelectorAll('#' + id + ' path.series')].some(p => p.getAttribute('d').includes('L')))""",
        timeout=20_000,
    )
    assert float(page.inner_text("#tokens-rate").replace(",", "")) >= 0
    assert page.inner_text("#latency-p50").endswith("ms") or "ms " in page.inner_text("#latency-p50")

    # And /v1/stats fills the models table and counts the readers on every web process; the failed generation
    # shows among the recent errors
    page.wait_for_selector("#models tr")
    assert "synthetic" in page.inner_text("#models")
    page.wait_for_function("Number(document.getElementById('readers-total').textContent) >= 1", timeout=10_000)
    page.wait_for_function(
        "document.getElementById('errors').textContent.includes('synthetic generation failed')", timeout=10_000
    )

    # And Flower is linked on the web port + 300 (as under `make dev`)
    port = int(stack.base_url.rsplit(":", 1)[1])
    assert page.get_attribute("#flower", "href") == f"http://127.0.0.1:{port + 300}/"

    if UPDATE_DOCS:
        # A fuller picture for docs/dashboard.png: half a minute of changing load.
        for round_ in range(12):
            readers += _read_in_background(
                stack,
                1 + round_ % 3,
                model="synthetic",
                prompt=f"docs {round_}",
                max_tokens=60,
                options={"tokens_per_second": 20 + 10 * (round_ % 4)},
            )
            page.wait_for_timeout(2500)
    shot = screenshot_path("dashboard")
    page.screenshot(path=str(shot), full_page=True)
    publish(shot, "dashboard.png")
    for reader in readers:
        reader.join(10)


def test_the_dashboard_asks_for_a_key_without_one(page: Page) -> None:
    page.goto("/dashboard")
    page.wait_for_function("document.getElementById('overall').dataset.status !== 'unknown'")
    assert "need an API key" in page.inner_text("#models-note")
    assert page.locator("#models tr").count() == 0


def test_dashboard_data_needs_an_api_key(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="hi")

    anonymous = httpx.get(stack.url("/dashboard/data"), timeout=10)
    with_token = httpx.get(stack.url("/dashboard/data"), params={"token": gen["stream_token"]}, timeout=10)
    with_key = stack.get("/dashboard/data")

    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "missing_credentials")
    assert (with_token.status_code, with_token.json()["error"]["code"]) == (403, "forbidden")
    assert with_key.status_code == 200
    dead = with_key.json()["dead_letters"]
    assert dead["total"] >= 0 and isinstance(dead["recent"], list)

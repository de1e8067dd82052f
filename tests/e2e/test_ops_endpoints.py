"""A PaaS deploy scraped through web alone: /metrics behind OPS_TOKEN with the consumers' metrics in it, the bare
/readyz for the load balancer, and the client address taken from the router's X-Forwarded-For."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import wait_for
from tests.support.procfile import ROOT
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

OPS_TOKEN = "e2e-ops-token-0123456789"


@pytest.fixture(scope="module")
def paas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("ops-redis"),
        ROOT / "test-artifacts" / "ops-logs",
        processes=("web", "consumer"),
        OPS_TOKEN=OPS_TOKEN,
        TRUSTED_PROXIES="1",
        RATE_LIMIT="3/minute",
    ) as stack:
        yield stack


def _scrape_with_consumers(stack: Stack) -> str | None:
    """web's /metrics (with the token) once it holds a consumer's samples."""
    answer = httpx.get(stack.url("/metrics"), headers={"Authorization": f"Bearer {OPS_TOKEN}"}, timeout=10)
    assert answer.status_code == 200
    return answer.text if 'consumer="' in answer.text else None


def test_one_scrape_of_web_covers_the_consumer_in_a_valid_exposition(paas: Stack) -> None:
    # Given a consumer whose port nobody can scrape, when web is scraped with the token
    text = wait_for(
        lambda: _scrape_with_consumers(paas),
        timeout_s=30,
        interval_s=0.5,
        message="the consumer's metrics never reached web's /metrics",
    )
    assert text is not None
    # Then its metrics are there, labelled with its name, in one valid exposition
    families = list(text_string_to_metric_families(text))
    assert [name for name, n in Counter(f.name for f in families).items() if n > 1] == []
    relayed = {s.name for f in families for s in f.samples if "consumer" in s.labels}
    assert {"tokenbridge_consumer_owned_generations", "tokenbridge_work_lag"} <= relayed
    alive = [s.value for f in families for s in f.samples if s.name == "tokenbridge_consumers_alive"]
    assert alive == [1]


def test_ops_endpoints_answer_the_public_only_the_bare_status(paas: Stack) -> None:
    anonymous = httpx.get(paas.url("/metrics"), timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.json()["error"]["code"] == "missing_credentials"
    ready = httpx.get(paas.url("/readyz"), timeout=10)
    assert ready.status_code == 200 and set(ready.json()) == {"status"}


def test_clients_behind_the_router_are_limited_one_by_one(paas: Stack) -> None:
    def statuses(client: str, n: int) -> list[int]:
        headers = {"X-Forwarded-For": client}
        return [httpx.get(paas.url("/v1/stats"), headers=headers, timeout=10).status_code for _ in range(n)]

    assert statuses("203.0.113.10", 4) == [401, 401, 401, 429]
    assert statuses("203.0.113.11", 1) == [401]

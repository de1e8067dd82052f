"""/metrics and /readyz's checks behind OPS_TOKEN (or an admin key); the consumers' metrics relayed through web."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from bridge import keys, metrics_relay
from bridge.settings import Settings
from tests.support import wait_for
from workers.metrics import MetricsPublisher

OPS_TOKEN = "ops-token-0123456789abcdef"
KEYS = "app:app-key-0123456789,ops:admin-key-0123456789"


@pytest.fixture
def make_app(r: redis.Redis, make_settings: Callable[..., Settings]) -> Callable[..., Flask]:
    def create(**overrides: object) -> Flask:
        values: dict[str, object] = {
            "api_keys": KEYS,
            "api_key_scopes": "ops=admin",
            "celery_broker_url": "memory://",
            "rate_limit": "",
        }
        return create_app(make_settings(**{**values, **overrides}))

    return create


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def test_without_ops_token_the_ops_endpoints_stay_public_and_web_says_so(
    make_app: Callable[..., Flask], capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_app().test_client()
    assert "OPS_TOKEN is not set: /metrics and the checks of /readyz answer anyone." in capsys.readouterr().err
    assert client.get("/metrics").status_code == 200
    body = client.get("/readyz").json
    assert body is not None and "checks" in body


def test_with_ops_token_metrics_need_the_token_or_an_admin_key(make_app: Callable[..., Flask]) -> None:
    client = make_app(ops_token=OPS_TOKEN).test_client()
    # Given no credentials, a wrong token, another scheme
    for headers, code in (
        ({}, "missing_credentials"),
        (_bearer("not-the-token"), "invalid_credentials"),
        ({"Authorization": f"Basic {OPS_TOKEN}"}, "invalid_credentials"),
    ):
        answer = client.get("/metrics", headers=headers)
        # Then 401, in the error shape of every route, with the challenge
        assert answer.status_code == 401, headers
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.json is not None and answer.json["error"]["code"] == code
    # A key of another scope is known, and refused
    refused = client.get("/metrics", headers=_bearer("app-key-0123456789"))
    assert refused.status_code == 403 and refused.json is not None
    assert refused.json["error"]["code"] == "insufficient_scope"
    # The token and an admin key are let through
    for credential in (OPS_TOKEN, "admin-key-0123456789"):
        answer = client.get("/metrics", headers=_bearer(credential))
        assert answer.status_code == 200 and b"tokenbridge_redis_up" in answer.data


def test_with_ops_token_readyz_shows_anyone_the_status_and_only_the_token_the_checks(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(ops_token=OPS_TOKEN).test_client()
    # A load balancer gets the status code and the status, nothing more
    public = client.get("/readyz")
    assert public.status_code == 200 and public.json is not None
    assert set(public.json) == {"status"} and public.json["status"] in ("healthy", "degraded")
    # The token (or an admin key) gets the checks
    for credential in (OPS_TOKEN, "admin-key-0123456789"):
        detailed = client.get("/readyz", headers=_bearer(credential)).json
        assert detailed is not None and {"redis", "consumers", "celery"} <= set(detailed["checks"])
    # Any other credential (a wrong token, a client's own key) gets the bare status too: /readyz never refuses
    for credential in ("nope", "app-key-0123456789"):
        other = client.get("/readyz", headers=_bearer(credential))
        assert other.status_code == 200 and other.json is not None and set(other.json) == {"status"}


def test_auth_disabled_does_not_open_the_ops_endpoints(make_app: Callable[..., Flask]) -> None:
    client = make_app(ops_token=OPS_TOKEN, auth_disabled=True).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=_bearer(OPS_TOKEN)).status_code == 200


def test_the_dashboard_data_stays_behind_an_api_key(make_app: Callable[..., Flask]) -> None:
    client = make_app(ops_token=OPS_TOKEN).test_client()
    assert client.get("/dashboard/data").status_code == 401
    assert client.get("/dashboard/data", headers=_bearer(OPS_TOKEN)).status_code == 401  # not an API key
    assert client.get("/dashboard/data", headers=_bearer("app-key-0123456789")).status_code == 200


def _consumer_exposition(dead_letters: int) -> bytes:
    """What a consumer pushes: its own families, some of which web exports too (process_*, in this process)."""
    registry = CollectorRegistry()
    Counter("tokenbridge_dead_letters_total", "Entries moved to llm:dead", registry=registry).inc(dead_letters)
    Gauge("tokenbridge_work_lag", "Generations not yet handed to a consumer", registry=registry).set(7)
    Histogram("tokenbridge_time_to_first_token_seconds", "TTFT", ["model"], registry=registry).labels("echo").observe(
        0.2
    )
    Gauge("process_open_fds", "Number of open file descriptors.", registry=registry).set(12)
    return generate_latest(registry)


def test_web_serves_the_live_consumers_metrics_labelled_in_one_valid_exposition(
    r: redis.Redis, make_app: Callable[..., Flask]
) -> None:
    # Given two live consumers that pushed their metrics, and one whose heartbeat stopped long ago
    client = make_app(ops_token=OPS_TOKEN).test_client()
    now_ms = int(time.time() * 1000)
    r.zadd(keys.CONSUMERS_ZSET, {"c-1": now_ms, "c-2": now_ms, "c-gone": now_ms - 60_000})
    metrics_relay.publish(r, "c-1", _consumer_exposition(1))
    metrics_relay.publish(r, "c-2", _consumer_exposition(2))
    metrics_relay.publish(r, "c-gone", _consumer_exposition(3))
    # When web is scraped
    text = client.get("/metrics", headers=_bearer(OPS_TOKEN)).get_data(as_text=True)
    # Then the exposition parses, with one HELP and one TYPE per family
    families = list(text_string_to_metric_families(text))
    assert [name for name, n in Tally(f.name for f in families).items() if n > 1] == []
    declared = [line.split()[2] for line in text.splitlines() if line.startswith(("# HELP", "# TYPE"))]
    assert [name for name, n in Tally(declared).items() if n != 2] == []
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    # And each live consumer's samples carry its name; the stopped one's are gone
    assert samples[("tokenbridge_dead_letters_total", (("consumer", "c-1"),))] == 1
    assert samples[("tokenbridge_dead_letters_total", (("consumer", "c-2"),))] == 2
    assert samples[("tokenbridge_work_lag", (("consumer", "c-2"),))] == 7
    ttft = ("tokenbridge_time_to_first_token_seconds_count", (("consumer", "c-1"), ("model", "echo")))
    assert samples[ttft] == 1
    assert not any(dict(labels).get("consumer") == "c-gone" for _, labels in samples)
    # And web counts the live consumers itself, for an alert that needs no consumer target
    assert samples[("tokenbridge_consumers_alive", ())] == 2


def test_a_consumer_pushes_its_registry_with_a_short_expiry_and_withdraws_it_at_stop(r: redis.Redis) -> None:
    publisher = MetricsPublisher(r, "c-push", interval_s=0.05)
    publisher.start()
    key = keys.consumer_metrics("c-push")
    wait_for(lambda: r.exists(key), timeout_s=5, message="the consumer's registry was never pushed")
    text = r.get(key)
    assert text is not None and "tokenbridge_consumer_entries_total" in str(text)
    ttl_ms = r.pttl(key)
    assert isinstance(ttl_ms, int)
    assert 0 < ttl_ms <= metrics_relay.PUSH_INTERVAL_S * metrics_relay.STALE_INTERVALS * 1000
    publisher.close()
    assert not r.exists(key)


def test_a_consumer_text_that_does_not_parse_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    merged = metrics_relay.merge(
        b"# TYPE a gauge\na 1\n", {"bad": b"this is { not exposition", "good": b"# TYPE b gauge\nb 2\n"}
    )
    names = [f.name for f in text_string_to_metric_families(merged.decode())]
    assert names == ["a", "b"]
    assert any("bad" in record.getMessage() for record in caplog.records)

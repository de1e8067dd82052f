"""TRUSTED_PROXIES: the client address behind proxies comes from X-Forwarded-For, and only then."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis
from flask import Flask

from app import create_app
from bridge.settings import Settings

ROUTER = "10.0.0.7"  # the address web sees: the proxy's


@pytest.fixture
def make_app(r: redis.Redis, make_settings: Callable[..., Settings]) -> Callable[..., Flask]:
    """``create(trusted_proxies)``: web on a Redis of its own (rate limits counted there), two requests a minute."""

    def create(trusted_proxies: int) -> Flask:
        settings = make_settings(trusted_proxies=trusted_proxies, rate_limit="2/minute", celery_broker_url="memory://")
        return create_app(settings)

    return create


def _statuses(app: Flask, forwarded_for: list[str]) -> list[int]:
    """Requests without an API key (counted per client address), one per X-Forwarded-For value."""
    client = app.test_client()
    return [
        client.get("/v1/stats", headers={"X-Forwarded-For": xff}, environ_base={"REMOTE_ADDR": ROUTER}).status_code
        for xff in forwarded_for
    ]


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_change_the_rate_limit_identity(
    make_app: Callable[..., Flask],
) -> None:
    # Given web trusting no proxy, when one client sends a different X-Forwarded-For with each request
    statuses = _statuses(make_app(0), ["203.0.113.1", "203.0.113.2", "203.0.113.3"])
    # Then they all count against the TCP peer: the third is limited
    assert statuses == [401, 401, 429]


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_behind_one_trusted_proxy_two_clients_get_separate_rate_limits(make_app: Callable[..., Flask]) -> None:
    app = make_app(1)
    audit, kept = logging.getLogger("tokenbridge.audit"), _Kept()
    audit.addHandler(kept)
    try:
        # Given client A at its limit (what it put in front of the router's entry is not believed)
        assert _statuses(app, ["203.0.113.1", "198.51.100.9, 203.0.113.1"]) == [401, 401]
    finally:
        audit.removeHandler(kept)
    # Then A's next request is limited, and client B, behind the same router, is not
    assert _statuses(app, ["203.0.113.1", "203.0.113.2"]) == [429, 401]
    # And the audit trail names the client, not the router
    assert [getattr(record, "client", None) for record in kept.records] == ["203.0.113.1", "203.0.113.1"]

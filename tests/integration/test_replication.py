"""REDIS_WAIT_REPLICAS: a submission waits for replicas; their absence is logged once per outage, not per write."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis

from bridge import replication
from bridge.settings import Settings


def test_without_the_replicas_asked_for_the_warning_is_logged_once_per_outage(
    r: redis.Redis,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Redis with no replica, and a process that asks for one (a short wait), replicas confirming until now
    monkeypatch.setattr(replication, "_unconfirmed", 0)
    settings = make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=20)
    caplog.set_level(logging.WARNING, logger="bridge.replication")
    # When five generations are confirmed in a row
    confirmed = [replication.confirm_replicated(r, settings, what=f"Generation {n}") for n in range(5)]
    # Then none is, and one warning says so (naming the first), not five
    assert confirmed == [False] * 5
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "bridge.replication"]
    assert len(warnings) == 1 and warnings[0].startswith("Generation 0: 0 of 1 replicas confirmed")

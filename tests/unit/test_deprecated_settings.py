"""HUB_READ_COUNT, CLIENT_QUEUE_SIZE and CONSUMER_BATCH: constants now, whose variables are still honoured, with a
warning at start that names them, until the next minor release."""

from __future__ import annotations

import logging

import fakeredis
import pytest

from app import _warn_at_start
from app.hub import CLIENT_QUEUE_SIZE, HUB_READ_COUNT
from app.services import Services
from bridge.settings import Settings
from bridge.settings.deprecated import REPLACEMENTS
from workers import consumer
from workers.consumer import CONSUMER_BATCH, ConsumerWorker

DEPRECATED = {"HUB_READ_COUNT": "7", "CLIENT_QUEUE_SIZE": "64", "CONSUMER_BATCH": "3"}


@pytest.fixture(autouse=True)
def no_deprecated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DEPRECATED:
        monkeypatch.delenv(name, raising=False)


def _web(**settings: object) -> Services:
    """The web's services on a Redis that is not there (the hub is built all the same)."""
    return Services.build(Settings(redis_url="redis://127.0.0.1:1/0", celery_broker_url="memory://", **settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", DEPRECATED)
def test_a_deprecated_setting_that_is_set_is_named_in_a_warning(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, DEPRECATED[name])
    [warning] = Settings().deprecations()
    assert warning.startswith(f"{name} is deprecated and will be removed in the next minor release")
    assert "Instead: nothing" in warning
    assert warning in Settings().order_problems()


def test_unset_they_warn_of_nothing() -> None:
    assert Settings().deprecations() == [] and Settings().order_problems() == []


def test_web_logs_the_warning_at_start(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CLIENT_QUEUE_SIZE", "64")
    with caplog.at_level(logging.WARNING, logger="app"):
        _warn_at_start(Settings(auth_disabled=True, ops_token="t"))
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == Settings().deprecations()


def test_the_hub_takes_its_constants_or_the_deprecated_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = _web().hub
    assert (hub.count, hub.queue_size) == (HUB_READ_COUNT, CLIENT_QUEUE_SIZE)
    monkeypatch.setenv("HUB_READ_COUNT", "7")
    monkeypatch.setenv("CLIENT_QUEUE_SIZE", "64")
    hub = _web().hub
    assert (hub.count, hub.queue_size) == (7, 64)


def test_the_consumer_takes_its_constant_or_the_deprecated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    assert ConsumerWorker(client, Settings(), []).batch == CONSUMER_BATCH
    monkeypatch.setenv("CONSUMER_BATCH", "3")
    assert ConsumerWorker(client, Settings(), []).batch == 3
    # A test tunes the constant itself
    monkeypatch.delenv("CONSUMER_BATCH")
    monkeypatch.setattr(consumer, "CONSUMER_BATCH", 5)
    assert ConsumerWorker(client, Settings(), []).batch == 5


def test_the_documented_values_are_the_constants() -> None:
    constants = {
        "hub_read_count": HUB_READ_COUNT,
        "client_queue_size": CLIENT_QUEUE_SIZE,
        "consumer_batch": CONSUMER_BATCH,
    }
    assert set(constants) == set(REPLACEMENTS)
    for name, value in constants.items():
        assert f"Unset: {value}, a tuned constant." in (Settings.model_fields[name].description or "")
        assert REPLACEMENTS[name].startswith("nothing") and name.upper() in REPLACEMENTS[name]

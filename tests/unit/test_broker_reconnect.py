"""The Celery worker goes back to its broker within a second of it answering again (tasks.reconnect)."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.exceptions import OperationalError
from kombu.utils import functional

from bridge.embedded import free_port
from bridge.settings import Settings
from tasks.celery_app import create_celery
from tasks.reconnect import INTERVAL_MAX_S, Consumer


def test_the_worker_waits_at_most_a_second_between_tries_to_reach_its_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the worker's app, whose broker does not answer, and a count of the waits between tries
    app = create_celery(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    app.conf.broker_connection_max_retries = 6
    assert app.conf.worker_consumer == "tasks.reconnect:Consumer"
    waits: list[float] = []
    monkeypatch.setattr(functional, "sleep", waits.append)
    consumer: Any = object.__new__(Consumer)  # only what ensure_connected reads
    consumer.app, consumer.first_connection_attempt, consumer.broker_connection_retry_attempt = app, False, 0
    # When its consumer connects
    with pytest.raises(OperationalError), app.connection_for_read() as connection:
        consumer.ensure_connected(connection)
    # Then it tried again after a quarter of a second, then a little longer, never after more than a second
    # (Celery's own waits are 2, 4, 6 … s: after a failover the promoted Redis waited for them)
    assert [wait for wait in waits if wait] == [0.25, 0.5, 0.75, INTERVAL_MAX_S, INTERVAL_MAX_S, INTERVAL_MAX_S]

"""Celery's broker apart from the streams: RabbitMQ (skipped where no RabbitMQ listens on 127.0.0.1:5672)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import AMQP_URL, rabbitmq_listens
from tests.support.procfile import ROOT
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def amqp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not rabbitmq_listens():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    # A queue of our own on the shared broker: nothing else consumes it, and it is empty when we start.
    queue_vhost = AMQP_URL
    with running_stack(
        tmp_path_factory.mktemp("amqp-redis"), ROOT / "test-artifacts" / "amqp-logs", CELERY_BROKER_URL=queue_vhost
    ) as stack:
        yield stack


def test_generations_stream_with_celery_on_rabbitmq(amqp_stack: Stack) -> None:
    prompts = [f"over rabbitmq number {i}" for i in range(5)]
    generations = [amqp_stack.create(model="echo", prompt=p) for p in prompts]
    for prompt, generation in zip(prompts, generations, strict=True):
        events = amqp_stack.events(generation).events
        assert "".join(e.data["content"] for e in events if e.event == "token") == prompt
        assert events[-1].event == "done"

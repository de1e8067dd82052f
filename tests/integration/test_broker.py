"""The broker's transport (bridge.broker): kombu's Redis transport with one client per channel, on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from bridge import broker
from bridge.embedded import EmbeddedRedis
from bridge.settings import Settings
from bridge.task_queue import celery_client_options
from tasks.celery_app import create_celery


@pytest.fixture
def connection(redis_server: EmbeddedRedis, r: redis.Redis) -> Iterator[Connection]:
    broker.use_shared_clients()
    with Connection(redis_server.url) as conn:
        yield conn


def test_messages_flow_and_a_channel_builds_one_client_for_its_commands(connection: Connection) -> None:
    # Given a queue on a Redis broker, its URL as every process has it
    queue = Queue("broker-test", Exchange("broker-test"), routing_key="broker-test")
    received: list[object] = []
    with connection.channel() as channel:
        assert isinstance(channel, broker.Channel)
        queue(channel).declare()
        producer = connection.Producer(channel, serializer="json")
        consumer = connection.Consumer(queue, callbacks=[lambda body, message: (received.append(body), message.ack())])
        # When 20 messages are published, received and acknowledged (late acks, as the worker does)
        init = mock.patch.object(redis.Redis, "__init__", autospec=True, side_effect=redis.Redis.__init__)
        with init as built, consumer:
            for index in range(20):
                producer.publish({"n": index}, exchange=queue.exchange, routing_key="broker-test")
            while len(received) < 20:
                connection.drain_events(timeout=5)
        # Then every message arrived, in order, and the channel's commands went through one client, not one each
        assert received == [{"n": index} for index in range(20)]
        assert built.call_count <= 2  # its shared client and, once, the client of the event loop's BRPOP
        shared = channel._create_client()
        assert channel._create_client() is shared
        # And when kombu replaces the channel's pool (after a connection error), the client is built again for it
        channel._pool = None
        assert channel._create_client() is not shared and channel._create_client().connection_pool is channel.pool


def test_every_process_uses_it_for_a_redis_broker_and_shares_celerys_stand_in_backend(settings: Settings) -> None:
    worker = create_celery(settings)
    web = Celery("web", broker=settings.broker_url)
    web.conf.update(celery_client_options(settings))
    for app in (worker, web):
        with app.connection_for_write() as conn:
            assert isinstance(conn.transport, broker.Transport)
            # The broker still calls itself redis:// (Flower shows its queues by that scheme)
            assert conn.as_uri().startswith("redis://")
        # No result backend: one stand-in for the whole process, not one per greenlet
        assert app.conf.result_backend_thread_safe is True
        assert app.backend is app.backend and app._backend_cache is app.backend


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://localhost:6379/0", broker.Transport),
        ("rediss://localhost:6380/0", broker.Transport),
        ("sentinel://localhost:26379;sentinel://other:26379", broker.SentinelTransport),
    ],
)
def test_the_transport_follows_the_brokers_scheme(url: str, transport: type) -> None:
    broker.use_shared_clients()
    assert Connection(url).transport_cls in ("redis", "rediss", "sentinel")
    assert Connection(url).get_transport_cls() is transport


def test_rabbitmq_keeps_its_own_transport() -> None:
    broker.use_shared_clients()
    assert not issubclass(Connection("amqp://guest:guest@localhost:5672//").get_transport_cls(), broker.Transport)

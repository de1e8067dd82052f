"""The broker's transport (bridge.broker): kombu's Redis transport with one client per channel, on a real Redis."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from bridge import broker, keys, streams
from bridge.constants import GENERATE_TASK, GENERATION_QUEUE
from bridge.embedded import EmbeddedRedis
from bridge.settings import Settings
from bridge.task_queue import celery_client_options, prepared_generation_task, send_generation
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


def test_a_generation_stored_with_its_task_pushes_what_celery_would_send_and_a_refused_one_pushes_nothing(
    settings: Settings, r: redis.Redis
) -> None:
    # Given web's Celery app on a broker that is the Redis of the streams
    assert settings.broker_is_streams_redis
    web = Celery("web", broker=settings.broker_url)
    web.conf.update(celery_client_options(settings))
    cap = streams.RunningCap(keys.key_running("k"), limit=1, expire_ms=60_000)

    def submit(generation_id: str) -> streams.Submission:
        task = prepared_generation_task(web, generation_id)
        new = streams.NewGeneration(generation_id, "s1", "echo", {"model": "echo"}, api_key="k")
        return streams.submit(
            r, new, group="g", retention_ms=60_000, session_ttl_ms=60_000, check_circuit=False, running=cap, task=task
        )

    # When a task is prepared, nothing is pushed yet
    prepared_generation_task(web, "gen-0")
    assert r.llen(GENERATION_QUEUE) == 0
    # When a generation is stored with its task, the queue holds one Celery message running it
    assert submit("gen-1") is streams.Submission.CREATED
    (raw,) = r.lrange(GENERATION_QUEUE, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == GENERATE_TASK
    assert json.loads(base64.b64decode(message["body"]))[0] == ["gen-1"]
    assert message["properties"]["delivery_info"]["routing_key"] == GENERATION_QUEUE
    # And when the key's cap refuses the next one, neither it nor its task is stored
    assert submit("gen-2") is streams.Submission.TOO_MANY_RUNNING
    assert r.llen(GENERATION_QUEUE) == 1 and not r.exists(keys.gen_meta("gen-2"))
    # And a publish outside the capture still goes straight to the broker
    send_generation(web, "gen-3")
    assert r.llen(GENERATION_QUEUE) == 2


def test_a_broker_of_its_own_or_a_cluster_gets_its_tasks_sent_as_before(make_settings: Callable[..., Settings]) -> None:
    assert not make_settings(celery_broker_url="amqp://guest@127.0.0.1//").broker_is_streams_redis
    same = make_settings().resolved_redis_url
    assert make_settings(celery_broker_url=same).broker_is_streams_redis
    assert not make_settings(celery_broker_url=same, redis_cluster=True).broker_is_streams_redis

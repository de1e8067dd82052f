"""A consumer on a real Redis broker as Flower sees it: its Celery events, read the way Flower reads them
(``celery.events.state``), and its answers to the inspect commands Flower broadcasts (``celery.pidbox``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.events.state import State
from kombu.exceptions import OperationalError

from bridge.embedded import EmbeddedRedis
from bridge.producer import GenerationWriter
from bridge.settings import Settings
from tests.support import new_generation, wait_for
from workers.celery_events import PROCESS_TASK, CeleryEvents
from workers.consumer import ConsumerWorker
from workers.processors import default_processors


class Monitor:
    """What Flower does: capture every event from the broker into a ``State``."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.state = State()
        self.types: list[tuple[str, str]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.types.append((event["type"], event.get("uuid") or event["hostname"]))
        self.state.event(event)

    def _capture(self) -> None:
        with self.app.connection() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Monitor:
        self._thread.start()
        # Subscribed once a probe comes through (events sent before that would be lost).
        with self.app.connection_for_write() as connection:
            probe = self.app.events.Dispatcher(connection, hostname="probe@test", enabled=True)
            wait_for(lambda: "probe@test" in self.state.workers, step=lambda: _probe(probe), timeout_s=10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)

    def task_events(self, uuid: str) -> list[str]:
        return [t for t, key in self.types if key == uuid]


def _probe(dispatcher: Any) -> None:
    dispatcher.send("worker-heartbeat", freq=1.0)
    time.sleep(0.05)  # pacing of the probes while the monitor subscribes


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    app = Celery("test-consumer-events", broker=settings.broker_url)
    yield app
    app.close()


@pytest.fixture
def monitor(celery_app: Celery, r: redis.Redis) -> Iterator[Monitor]:
    with Monitor(celery_app) as running:
        yield running


@pytest.fixture
def make_consumer(r: redis.Redis, settings: Settings, celery_app: Celery) -> Iterator[Callable[[str], ConsumerWorker]]:
    started: list[CeleryEvents] = []

    def create(name: str) -> ConsumerWorker:
        events = CeleryEvents(celery_app, name, heartbeat_s=0.2)
        events.start()
        started.append(events)
        return ConsumerWorker(r, settings, default_processors(r), name=name, events=events)

    yield create
    for events in started:
        events.close()


def _writer(r: redis.Redis, gid: str) -> GenerationWriter:
    writer = GenerationWriter(r, gid, lease_ms=10_000, max_length=10_000)
    writer.claim()
    return writer


def _tokens(n: int) -> list[tuple[str, dict[str, Any]]]:
    return [("token", {"content": f"w{i} ", "ts": 1.0}) for i in range(n)]


def test_flower_sees_the_consumer_and_each_generation_once_per_state_change(
    r: redis.Redis, settings: Settings, monitor: Monitor, make_consumer: Callable[[str], ConsumerWorker]
) -> None:
    # Given a consumer, and three generations of 20 tokens that end in done, error and cancelled
    consumer = make_consumer("consumer-a")
    ends: dict[str, tuple[str, dict[str, Any]]] = {
        "gen_done": ("done", {"finish_reason": "stop", "usage": {}}),
        "gen_error": ("error", {"code": "provider_error", "message": "the model broke"}),
        "gen_cancelled": ("cancelled", {}),
    }
    writers = {gid: _writer(r, new_generation(r, settings, gid)) for gid in ends}
    consumer.run_once(block_ms=50)  # takes them
    for gid, end in ends.items():
        for i in range(0, 20, 5):
            writers[gid].write(_tokens(20)[i : i + 5])
            consumer.run_once(block_ms=50)
        writers[gid].write([end])
    wait_for(lambda: not consumer.owned, step=lambda: consumer.run_once(block_ms=50))
    # Then Flower's state holds the consumer as a live worker with its heartbeat
    wait_for(lambda: sum(t.ready for t in monitor.state.tasks.values()) == 3, timeout_s=5)
    worker = monitor.state.workers["consumer@consumer-a"]
    assert worker.alive and worker.freq == 0.2
    # And each generation as a task of that worker in the state its end says
    states = {task.args: (task.name, task.state, task.worker.hostname) for task in monitor.state.tasks.values()}
    assert states == {
        "['gen_done']": (PROCESS_TASK, "SUCCESS", "consumer@consumer-a"),
        "['gen_error']": (PROCESS_TASK, "FAILURE", "consumer@consumer-a"),
        "['gen_cancelled']": (PROCESS_TASK, "REVOKED", "consumer@consumer-a"),
    }
    assert "provider_error" in monitor.state.tasks["gen_error@consumer-a"].exception
    # And 20 tokens in several batches made three events per generation, not one per token
    for gid in ends:
        assert len(monitor.task_events(f"{gid}@consumer-a")) == 3


def test_a_takeover_is_a_new_task_on_the_new_owner_and_a_retry_on_the_old_one(
    r: redis.Redis, settings: Settings, monitor: Monitor, make_consumer: Callable[[str], ConsumerWorker]
) -> None:
    # Given consumer A started a generation, then stalled
    gid = new_generation(r, settings, "gen_1")
    a = make_consumer("consumer-a")
    a.run_once(block_ms=50)
    writer = _writer(r, gid)
    writer.write(_tokens(3))
    a.run_once(block_ms=50)
    # When B takes it over and finishes it
    b = make_consumer("consumer-b")
    wait_for(lambda: gid in b.owned, step=lambda: b.run_once(block_ms=50))
    writer.write([("done", {"finish_reason": "stop", "usage": {}})])
    wait_for(lambda: gid not in b.owned, step=lambda: b.run_once(block_ms=50))
    # And A notices it lost it
    a.housekeeping()
    # Then Flower shows A's task handed on (retried elsewhere) and B's, a task of its own, succeeded
    wait_for(lambda: len(monitor.task_events("gen_1@consumer-b")) == 3, timeout_s=5)
    wait_for(lambda: len(monitor.task_events("gen_1@consumer-a")) == 3, timeout_s=5)
    assert monitor.task_events("gen_1@consumer-a") == ["task-received", "task-started", "task-retried"]
    assert monitor.state.tasks["gen_1@consumer-a"].state == "RETRY"
    taken = monitor.state.tasks["gen_1@consumer-b"]
    assert (taken.state, taken.worker.hostname, taken.kwargs) == (
        "SUCCESS",
        "consumer@consumer-b",
        "{'model': 'echo', 'session_id': 's1', 'taken_over': True}",
    )


def test_a_consumer_that_stops_goes_offline_and_hands_its_generations_back(
    r: redis.Redis, settings: Settings, monitor: Monitor, make_consumer: Callable[[str], ConsumerWorker]
) -> None:
    # Given a running consumer that owns a generation
    gid = new_generation(r, settings, "gen_1")
    consumer = make_consumer("consumer-a")
    runner = threading.Thread(target=consumer.run)
    runner.start()
    wait_for(lambda: monitor.state.workers.get("consumer@consumer-a") is not None, timeout_s=5)
    wait_for(lambda: gid in consumer.owned, timeout_s=5)
    # When it stops
    consumer.stop()
    runner.join(10)
    # Then Flower shows it offline at once, and its generation handed back
    wait_for(lambda: not monitor.state.workers["consumer@consumer-a"].alive, timeout_s=5)
    wait_for(lambda: "task-retried" in monitor.task_events("gen_1@consumer-a"), timeout_s=5)
    assert monitor.state.tasks["gen_1@consumer-a"].state == "RETRY"


def test_without_a_broker_the_consumer_runs_on_and_events_wait(r: redis.Redis, settings: Settings) -> None:
    # Given a consumer whose Celery broker is down
    app = Celery("test-no-broker", broker="redis://127.0.0.1:1/0")
    events = CeleryEvents(app, "consumer-a", heartbeat_s=0.2)
    events.start()
    consumer = ConsumerWorker(r, settings, default_processors(r), name="consumer-a", events=events)
    try:
        # When a generation runs through it
        gid = new_generation(r, settings, "gen_1")
        consumer.run_once(block_ms=50)
        _writer(r, gid).write([*_tokens(3), ("done", {"finish_reason": "stop", "usage": {}})])
        started = time.monotonic()
        wait_for(lambda: gid not in consumer.owned, step=lambda: consumer.run_once(block_ms=50))
        # Then it is processed as fast as ever, and its events wait for the broker
        assert time.monotonic() - started < 2
        assert [t for t, _ in events.pending] == ["task-received", "task-started", "task-succeeded"]
    finally:
        closing = time.monotonic()
        events.close()
        assert time.monotonic() - closing < 3
        app.close()


def _answers(app: Celery, hostname: str, *, timeout_s: float = 10) -> None:
    """Wait until the consumer listens on the broadcast mailbox (it subscribes once its thread connects)."""
    inspect = app.control.inspect(destination=[hostname], timeout=0.5)

    def pong() -> bool:
        try:
            return inspect.ping() is not None
        except (OperationalError, redis.ConnectionError):
            return False  # the broker just came back: as Flower does, ask again

    wait_for(pong, timeout_s=timeout_s)


def test_flower_s_inspect_calls_get_the_consumer_s_answers(
    r: redis.Redis, settings: Settings, celery_app: Celery, make_consumer: Callable[[str], ConsumerWorker]
) -> None:
    # Given a consumer that processed one generation and owns a second, started one
    consumer = make_consumer("consumer-a")
    ended = _writer(r, new_generation(r, settings, "gen_done"))
    running = _writer(r, new_generation(r, settings, "gen_running"))
    consumer.run_once(block_ms=50)
    ended.write([*_tokens(3), ("done", {"finish_reason": "stop", "usage": {}})])
    running.write(_tokens(3))
    wait_for(lambda: "gen_done" not in consumer.owned, step=lambda: consumer.run_once(block_ms=50))
    _answers(celery_app, "consumer@consumer-a")
    # When Flower inspects it by name
    inspect = celery_app.control.inspect(destination=["consumer@consumer-a"], timeout=2)
    # Then it answers ping, stats, registered and active as a worker would
    assert inspect.ping() == {"consumer@consumer-a": {"ok": "pong"}}
    stats = inspect.stats()["consumer@consumer-a"]
    assert stats["total"] == {PROCESS_TASK: 1}
    assert stats["pid"] > 0 and int(stats["clock"]) > 0 and stats["pool"]["owned-generations"] == 1
    assert stats["broker"]["transport"] == "redis" and "password" not in stats["broker"]
    assert inspect.registered() == {"consumer@consumer-a": [PROCESS_TASK]}
    (task,) = inspect.active()["consumer@consumer-a"]
    assert (task["id"], task["name"], task["args"], task["hostname"]) == (
        "gen_running@consumer-a",
        PROCESS_TASK,
        ["gen_running"],
        "consumer@consumer-a",
    )
    assert task["time_start"] is not None and task["kwargs"]["taken_over"] is False
    # And what Flower asks of one worker's page has an answer too
    assert inspect.active(safe=True)["consumer@consumer-a"][0]["args"] == "['gen_running']"
    for empty in (inspect.reserved(), inspect.scheduled(), inspect.revoked(), inspect.active_queues()):
        assert empty == {"consumer@consumer-a": []}
    assert inspect.conf()["consumer@consumer-a"]["worker_hostname"] == "consumer@consumer-a"
    assert inspect.query_task("gen_running@consumer-a")["consumer@consumer-a"]["gen_running@consumer-a"][0] == "active"


def test_the_consumer_answers_only_what_is_sent_to_it_or_to_all(
    celery_app: Celery, make_consumer: Callable[[str], ConsumerWorker]
) -> None:
    # Given two consumers listening
    make_consumer("consumer-a")
    make_consumer("consumer-b")
    _answers(celery_app, "consumer@consumer-a")
    _answers(celery_app, "consumer@consumer-b")
    # Then a broadcast to all gets both answers, one sent to A only A's, one sent elsewhere none
    everyone = celery_app.control.inspect(timeout=1).ping() or {}
    assert {"consumer@consumer-a", "consumer@consumer-b"} <= set(everyone)
    assert celery_app.control.inspect(destination=["consumer@consumer-a"], timeout=1).ping() == {
        "consumer@consumer-a": {"ok": "pong"}
    }
    assert celery_app.control.inspect(destination=["consumer@nobody"], timeout=0.5).ping() is None


def test_control_commands_change_nothing_and_say_so(
    r: redis.Redis, settings: Settings, celery_app: Celery, make_consumer: Callable[[str], ConsumerWorker]
) -> None:
    # Given a consumer that owns a generation
    consumer = make_consumer("consumer-a")
    gid = new_generation(r, settings, "gen_1")
    consumer.run_once(block_ms=50)
    assert gid in consumer.owned
    _answers(celery_app, "consumer@consumer-a")
    # When Flower's buttons send what would stop or change a Celery worker
    destination = ["consumer@consumer-a"]
    celery_app.control.shutdown(destination=destination)
    celery_app.control.pool_restart(destination=destination)
    celery_app.control.revoke("gen_1@consumer-a", terminate=True, destination=destination)
    replies = celery_app.control.rate_limit(PROCESS_TASK, "1/m", destination=destination, reply=True, timeout=2)
    # Then a command that asks for a reply gets an error, and the consumer goes on answering and processing
    assert "not supported by a tokenbridge consumer" in replies[0]["consumer@consumer-a"]["error"]
    _answers(celery_app, "consumer@consumer-a")
    _writer(r, gid).write([*_tokens(2), ("done", {"finish_reason": "stop", "usage": {}})])
    wait_for(lambda: gid not in consumer.owned, step=lambda: consumer.run_once(block_ms=50))


def test_the_remote_control_comes_back_with_the_broker(
    r: redis.Redis, settings: Settings, tmp_path: Path, make_consumer: Callable[[str], ConsumerWorker]
) -> None:
    # Given a consumer answering on a broker of its own
    broker = EmbeddedRedis(tmp_path / "broker", appendonly=False).start()
    app = Celery("test-broker-outage", broker=broker.url)
    events = CeleryEvents(app, "consumer-a", heartbeat_s=0.2)
    events.start()
    consumer = ConsumerWorker(r, settings, default_processors(r), name="consumer-a", events=events)
    try:
        _answers(app, "consumer@consumer-a")
        # When the broker goes away, the consumer processes a generation all the same
        broker.kill()
        gid = new_generation(r, settings, "gen_1")
        consumer.run_once(block_ms=50)
        _writer(r, gid).write([*_tokens(3), ("done", {"finish_reason": "stop", "usage": {}})])
        wait_for(lambda: gid not in consumer.owned, step=lambda: consumer.run_once(block_ms=50), timeout_s=2)
        # Then once the broker is back it answers again, its count up to date
        broker.start()
        _answers(app, "consumer@consumer-a", timeout_s=20)
        stats = app.control.inspect(destination=["consumer@consumer-a"], timeout=2).stats()
        assert stats is not None and stats["consumer@consumer-a"]["total"] == {PROCESS_TASK: 1}
    finally:
        events.close()
        app.close()
        broker.stop()

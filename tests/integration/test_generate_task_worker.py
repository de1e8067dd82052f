"""The generation task in a real Celery worker: pytest-celery's in-process worker on a real Redis broker.

The worker runs in a thread of the test process (``celery.contrib.pytest``'s ``celery_worker``, enabled by the
pytest-celery plugin) with the production app's settings: JSON only, late acks, prefetch 1, the generations
queue. Tasks are sent the way ``web`` sends them (``send_generation``) and write to the same embedded Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from celery.contrib.pytest import celery_worker  # noqa: F401  (see below)
from celery.signals import task_postrun

from bridge import keys, streams
from bridge.connections import close, redis_client
from bridge.constants import GENERATE_TASK
from bridge.embedded import EmbeddedRedis
from bridge.models import registry_for
from bridge.settings import Settings
from bridge.task_queue import send_generation, waiting_tasks
from bridge.write_loop import WriteLoop
from tasks import generation
from tasks.celery_app import create_celery
from tests.support import status_of, wait_for
from workers.consumer import ConsumerWorker
from workers.processors import default_processors

# pytest-celery 1.x defines a ``celery_worker`` of its own (a worker in a Docker container) that shadows the
# in-process one of ``celery.contrib.pytest`` (celery/pytest-celery#442); the import above binds the latter here.

# What ``create_celery`` configures that a worker acts on; the rest of its configuration is for processes.
_WORKER_CONF = (
    "accept_content",
    "task_serializer",
    "result_serializer",
    "event_serializer",
    "task_ignore_result",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "task_default_queue",
    "task_routes",
    "worker_hijack_root_logger",
    "task_time_limit",
    "enable_utc",
    "result_backend_thread_safe",
)
# A broker visibility timeout shorter than a slow generation, as in celery#5935.
_VISIBILITY_TIMEOUT_S = 1


@pytest.fixture
def celery_config(r: redis.Redis, settings: Settings) -> dict[str, Any]:
    """The production app's configuration on this test's Redis (``r`` has emptied it first)."""
    production = create_celery(settings).conf
    config = {name: production[name] for name in _WORKER_CONF}
    config["broker_url"] = settings.broker_url
    config["broker_transport_options"] = {
        **production["broker_transport_options"],
        "visibility_timeout": _VISIBILITY_TIMEOUT_S,
        # Redelivery is what a test does by hand, not what the worker's own sweep happens to do.
        "unacked_restore_interval": 3600,
    }
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    return config


@pytest.fixture
def celery_includes() -> list[str]:
    return ["tasks.generation"]


@pytest.fixture
def celery_worker_pool() -> str:
    # Several generations at once in one process, as the gevent pool of the Procfile runs them.
    return "threads"


@pytest.fixture
def celery_worker_parameters() -> Mapping[str, Any]:
    # No ping: the task app ignores results, and the worker is ready once it consumes.
    return {"concurrency": 4, "perform_ping_check": False, "queues": ["generations"], "shutdown_timeout": 15}


@pytest.fixture(autouse=True)
def worker_process_state(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The task's process-wide settings, client and write loop, on this test's Redis; logging restored."""
    client = redis_client(settings.redis, max_connections=64)
    loop = WriteLoop(client)
    monkeypatch.setattr(generation, "_settings", lambda: settings)
    monkeypatch.setattr(generation, "_client", lambda: client)
    monkeypatch.setattr(generation, "_write_loop", lambda: loop)
    # The worker configures logging at start (tasks.celery_app's setup_logging handler): undo it afterwards.
    root = logging.getLogger()
    handlers, level, factory = list(root.handlers), root.level, logging.getLogRecordFactory()
    yield
    close(client)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)


@pytest.fixture
def outcomes() -> Iterator[dict[str, list[str]]]:
    """What each delivery of the task returned (``Celery`` state for a retry), per generation id."""
    seen: dict[str, list[str]] = {}
    lock = threading.Lock()

    def record(sender: Any = None, args: Any = None, retval: Any = None, state: str = "", **_: Any) -> None:
        if getattr(sender, "name", None) == GENERATE_TASK:
            with lock:
                seen.setdefault(args[0], []).append(retval if state == "SUCCESS" else state)

    task_postrun.connect(record, weak=False)
    yield seen
    task_postrun.disconnect(record)


def _create(r: redis.Redis, settings: Settings, gid: str, request: dict[str, Any]) -> str:
    streams.ensure_group(r, keys.WORK_STREAM, settings.redis_consumer_group)
    streams.create_generation(
        r,
        generation_id=gid,
        session_id="s1",
        model=str(request["model"]),
        request=request,
        group=settings.redis_consumer_group,
        retention_ms=settings.redis_stream_retention_ms,
    )
    return gid


def _raw(r: redis.Redis, gid: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, attempt, data) of each raw entry, oldest first."""
    return [(f["type"], f["attempt"], orjson.loads(f["data"])) for _, f in r.xrange(keys.gen_raw(gid))]


def _text(entries: list[tuple[str, str, dict[str, Any]]]) -> str:
    return "".join(str(data["content"]) for kind, _, data in entries if kind == "token")


def _finished(r: redis.Redis, gid: str) -> Callable[[], bool]:
    return lambda: bool(r.hget(keys.gen_meta(gid), "terminal"))


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def _numbered(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


@pytest.mark.usefixtures("celery_worker")
def test_a_submitted_generation_is_written_in_order_and_ends_once(
    r: redis.Redis, settings: Settings, celery_app: Celery, outcomes: dict[str, list[str]]
) -> None:
    # Given a generation of 300 numbered words
    prompt = _numbered(300)
    gid = _create(r, settings, "gen_1", {"model": "echo", "prompt": prompt})
    # When web hands it to the worker
    send_generation(celery_app, gid)
    wait_for(_finished(r, gid))
    # Then its raw stream holds every word once, in order, from one attempt, and one terminal event at the end
    entries = _raw(r, gid)
    assert _text(entries) == prompt
    words = [str(data["content"]).strip() for kind, _, data in entries if kind == "token"]
    assert words == [f"w{i}" for i in range(300)]
    assert [kind for kind, _, _ in entries] == ["token"] * 300 + ["done"]
    assert {attempt for _, attempt, _ in entries} == {"1"}
    assert entries[-1][2]["finish_reason"] == "stop"
    # And the task's one delivery finished it, leaving no lease behind
    wait_for(lambda: outcomes.get(gid) == ["finished"])
    meta = r.hgetall(keys.gen_meta(gid))
    assert meta["terminal"] == "done" and meta["attempt"] == "1"
    assert not r.exists(keys.gen_lease(gid))


@pytest.mark.usefixtures("celery_worker")
def test_generations_sent_together_run_side_by_side_without_mixing(
    r: redis.Redis, settings: Settings, celery_app: Celery, outcomes: dict[str, list[str]]
) -> None:
    # Given three slow generations sent at once to one worker
    prompts = {f"gen_{n}": f"{n}:" + _numbered(30) for n in range(3)}
    for gid, prompt in prompts.items():
        _create(r, settings, gid, {"model": "echo", "prompt": prompt, "options": {"delay_ms": 20}})
    started = time.monotonic()
    for gid in prompts:
        send_generation(celery_app, gid)
    for gid in prompts:
        wait_for(_finished(r, gid))
    # Then they ran at the same time (one after the other would take three times 0.6 s)
    assert time.monotonic() - started < 1.5
    # And each stream holds exactly its own words
    for gid, prompt in prompts.items():
        assert _text(_raw(r, gid)) == prompt
    wait_for(lambda: all(outcomes.get(gid) == ["finished"] for gid in prompts))


@pytest.mark.usefixtures("celery_worker")
def test_a_redelivered_task_is_fenced_while_the_first_delivery_runs(
    r: redis.Redis, settings: Settings, redis_server: EmbeddedRedis, celery_app: Celery, outcomes: dict[str, list[str]]
) -> None:
    # Given a generation that runs longer (about 2 s) than the broker's visibility timeout (1 s)
    prompt = _numbered(40)
    gid = _create(r, settings, "gen_1", {"model": "echo", "prompt": prompt, "options": {"delay_ms": 50}})
    send_generation(celery_app, gid)
    wait_for(lambda: r.xlen(keys.gen_raw(gid)) >= 3)
    # When the broker's sweep of unacknowledged messages gives the still-running task to the worker again
    # (kombu's own restore, as in celery#5935)
    time.sleep(_VISIBILITY_TIMEOUT_S + 0.2)  # a fixed wait, the scenario: the visibility timeout runs out
    with celery_app.connection_for_write() as connection:
        connection.default_channel.qos.restore_visible(num=100, interval=1)
    # Then the copy finds the first delivery's lease and returns without writing, while that one goes on
    wait_for(lambda: len(outcomes.get(gid, [])) == 2)
    assert outcomes[gid] == ["skipped:held", "finished"]
    entries = _raw(r, gid)
    assert _text(entries) == prompt
    assert {attempt for _, attempt, _ in entries} == {"1"}
    assert [kind for kind, _, _ in entries].count("restart") == 0 and entries[-1][0] == "done"


@pytest.mark.usefixtures("celery_worker")
def test_a_delivery_after_the_end_writes_nothing(
    r: redis.Redis, settings: Settings, celery_app: Celery, outcomes: dict[str, list[str]]
) -> None:
    # Given a generation that has finished
    gid = _create(r, settings, "gen_1", {"model": "echo", "prompt": "once only"})
    send_generation(celery_app, gid)
    wait_for(lambda: outcomes.get(gid) == ["finished"])
    written = r.xlen(keys.gen_raw(gid))
    # When its message is delivered again (a redelivery that comes late)
    send_generation(celery_app, gid)
    # Then that delivery is skipped and the stream is unchanged
    wait_for(lambda: outcomes.get(gid) == ["finished", "skipped:finished"])
    assert r.xlen(keys.gen_raw(gid)) == written


@pytest.mark.usefixtures("celery_worker")
def test_a_cancelled_generation_stops_its_task(
    r: redis.Redis, settings: Settings, celery_app: Celery, outcomes: dict[str, list[str]]
) -> None:
    # Given a long generation running in the worker
    gid = _create(r, settings, "gen_1", {"model": "echo", "prompt": _numbered(200), "options": {"delay_ms": 50}})
    send_generation(celery_app, gid)
    wait_for(lambda: r.xlen(keys.gen_raw(gid)) >= 2)
    # When it is cancelled
    cancelled_at = time.monotonic()
    streams.cancel(r, gid, max_length=settings.redis_stream_max_length)
    # Then the task stops promptly, the stream ends with one cancelled event and nothing after it
    wait_for(lambda: outcomes.get(gid) == ["cancelled"], timeout_s=5)
    assert time.monotonic() - cancelled_at < 1.5
    entries = _raw(r, gid)
    assert [kind for kind, _, _ in entries].count("cancelled") == 1 and entries[-1][0] == "cancelled"
    assert [kind for kind, _, _ in entries].count("token") < 100
    assert r.hget(keys.gen_meta(gid), "terminal") == "cancelled"


@pytest.mark.usefixtures("celery_worker")
def test_a_model_at_its_concurrency_limit_is_retried_by_celery_until_a_slot_frees(
    r: redis.Redis,
    settings: Settings,
    celery_app: Celery,
    outcomes: dict[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a model that runs one generation at a time, and a slow one of it running
    models = tmp_path / "models.toml"
    models.write_text('[models.one-at-a-time]\nprovider = "echo"\nconcurrency = 1\n')
    settings = settings.model_copy(update={"models_file": str(models)})
    monkeypatch.setattr(generation, "_settings", lambda: settings)
    registry_for.cache_clear()
    first = _create(
        r, settings, "gen_1", {"model": "one-at-a-time", "prompt": _numbered(10), "options": {"delay_ms": 60}}
    )
    send_generation(celery_app, first)
    wait_for(lambda: r.xlen(keys.gen_raw(first)) >= 1)
    # When a second one is submitted
    second = _create(r, settings, "gen_2", {"model": "one-at-a-time", "prompt": "second answer"})
    send_generation(celery_app, second)
    # Then its task is retried (not run) while the first holds the slot, and runs once the first is done
    wait_for(lambda: outcomes.get(second, [])[:1] == ["RETRY"], timeout_s=5)
    assert r.hget(keys.gen_meta(second), "attempt") == "0"
    wait_for(lambda: outcomes.get(second, [])[-1:] == ["finished"], timeout_s=10)
    assert outcomes[first] == ["finished"]
    assert _text(_raw(r, second)) == "second answer"
    [(first_done, _)] = r.xrevrange(keys.gen_raw(first), count=1)
    [(second_start, _)] = r.xrange(keys.gen_raw(second), count=1)
    assert _ms(second_start) >= _ms(first_done)
    assert r.zcard(keys.model_running("one-at-a-time")) == 0
    registry_for.cache_clear()


@pytest.mark.usefixtures("celery_worker")
def test_a_task_message_lost_before_any_worker_took_it_is_sent_again_and_the_generation_completes(
    r: redis.Redis, settings: Settings, celery_app: Celery, outcomes: dict[str, list[str]]
) -> None:
    # Given a generation whose task message never reached a worker (lost with a worker, or with a connection)
    settings = settings.model_copy(update={"task_resend_s": 0.2})
    gid = _create(r, settings, "gen_1", {"model": "echo", "prompt": "sent again"})
    consumer = ConsumerWorker(r, settings, default_processors(r), enqueue=lambda g: send_generation(celery_app, g))
    # When the consumer that owns it supervises it
    wait_for(lambda: status_of(r, gid) == "completed", step=lambda: consumer.run_once(block_ms=20), timeout_s=10)
    # Then its task was sent again once, and that copy ran it to the end
    assert r.hget(keys.gen_meta(gid), "resends") == "1"
    # (the task records its outcome after its last write: the generation can be completed a moment before)
    wait_for(lambda: gid in outcomes)
    assert outcomes[gid] == ["finished"]
    assert r.get(keys.gen_text(gid)) == "sent again"


def test_the_tasks_waiting_in_the_redis_broker_queue_are_counted(r: redis.Redis, celery_app: Celery) -> None:
    # Given no worker: an empty queue is no key at all on a Redis broker
    assert waiting_tasks(celery_app) == 0
    # When three generation tasks are sent
    for gid in ("gen_1", "gen_2", "gen_3"):
        send_generation(celery_app, gid)
    # Then they are counted as waiting
    assert waiting_tasks(celery_app) == 3

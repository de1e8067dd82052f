"""The failure model, proven with real processes: kill -9, redelivery, poison, Redis outage, deploys.

The standard for every scenario: each reader ends with exactly the text the producer produced (or an
explicit restart / error), no token lost, none duplicated, no stream left hanging.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from bridge import keys
from tasks.shutdown import SHUTDOWN_GRACE_S
from tests.support import wait_for
from tests.support.fault_processors import FixablePoison
from tests.support.reader import ReadOutcome, ResumingReader, read_all
from tests.support.stack import ADMIN_KEY, Stack

pytestmark = [pytest.mark.slow, pytest.mark.faults]

WORDS = " ".join(f"word{i}" for i in range(60))
# The recovery settings as shipped (tests/support/stack.py speeds housekeeping up for the others): what a user gets.
DEFAULTS = {"CONSUMER_HEARTBEAT_MS": "1000", "CONSUMER_CLAIM_IDLE_MS": "10000"}


def _readers(stack: Stack, generations: list[dict[str, object]], webs: list[int] | None = None) -> list[ResumingReader]:
    urls = [f"http://127.0.0.1:{stack.web_ports[i]}" for i in (webs or [0])]
    return [ResumingReader(urls, g, stack.headers) for g in generations]  # type: ignore[arg-type]


def _assert_exact(outcomes: list[ReadOutcome], text: str, *, terminal: str = "done") -> None:
    for outcome in outcomes:
        assert outcome.terminal is not None, "stream left hanging"
        assert outcome.terminal.event == terminal, outcome.terminal
        assert outcome.duplicates == 0
        assert outcome.seq_gaps == 0
        if terminal == "done":
            assert outcome.text == text


def _wait_streaming(readers: list[ResumingReader], *, events: int) -> None:
    """Until every reader has had ``events`` events: the generations are under way when the fault strikes."""
    wait_for(lambda: all(len(r.outcome.events) >= events for r in readers), timeout_s=30, message="streams started")


def test_consumer_killed_mid_generation_is_taken_over(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given generations being processed by consumer A only, with the default settings
    stack = make_stack(**DEFAULTS)
    stack.start("web")
    stack.start("worker")
    stack.start("consumer-a", "consumer")
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 60}) for _ in range(5)]
    readers = _readers(stack, generations)
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=5)
    # When another consumer starts (as a PaaS would) and A is killed with SIGKILL
    stack.start("consumer-b", "consumer")
    stack.wait_ready(consumers=2)
    killed_at = time.monotonic()
    stack.kill("consumer-a")
    outcomes = read_all(readers)
    # Then every reader has the whole text, no gap, no duplicate
    _assert_exact(outcomes, WORDS)
    stalls = [o.longest_stall_s for o in outcomes]
    record(scenario="consumer kill -9", recovery_s=round(max(stalls), 2), lost=0, duplicated=0, readers=len(outcomes))
    # And B took them over when A's heartbeat stopped, not after the idle time (CONSUMER_CLAIM_IDLE_MS, 10 s)
    assert "whose heartbeat stopped" in (stack.logs / "consumer-b.log").read_text()
    assert max(stalls) < 9
    assert time.monotonic() - killed_at < 60


def test_a_consumer_paused_for_2_s_keeps_its_generations(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given generations being processed by consumer A, and consumer B beside it (default settings)
    stack = make_stack(**DEFAULTS)
    stack.start("web")
    stack.start("worker")
    stack.start("consumer-a", "consumer")
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 60}) for _ in range(3)]
    readers = _readers(stack, generations)
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=5)
    stack.start("consumer-b", "consumer")
    stack.wait_ready(consumers=2)
    # A fixed wait (B's own heartbeat is not observable from here): B has watched for longer than
    # CONSUMER_DEAD_AFTER_MS (2.5 s), so it may judge A
    time.sleep(3)
    # When A stops for 2 s (SIGSTOP: a CPU-starved host, a long pause), then goes on
    stack.signal("consumer-a", signal.SIGSTOP)
    time.sleep(2)  # a fixed wait, the scenario: the pause, shorter than CONSUMER_DEAD_AFTER_MS
    stack.signal("consumer-a", signal.SIGCONT)
    outcomes = read_all(readers)
    # Then every reader has the exact text, and A kept its generations: nobody took them over (observed until every
    # generation ended, after which there is nothing left to take over)
    _assert_exact(outcomes, WORDS)
    logs = "".join((stack.logs / f"{name}.log").read_text() for name in ("consumer-a", "consumer-b"))
    record(scenario="consumer SIGSTOP 2 s", takeovers=logs.count("Taking over generation"), lost=0, duplicated=0)
    assert "Taking over generation" not in logs


def test_celery_worker_killed_mid_generation_restarts_on_another(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given generations running on worker A, with worker B idle beside it (default settings)
    stack = make_stack(**DEFAULTS)
    stack.start("web")
    stack.start("consumer")
    stack.start("worker-a", "worker")
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 150}) for _ in range(4)]
    readers = _readers(stack, generations)
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=5)
    stack.start("worker-b", "worker")
    stack.wait_ready(workers=2)
    # When worker A is killed with SIGKILL
    killed_at = time.monotonic()
    stack.kill("worker-a")
    outcomes = read_all(readers)
    # Then each generation restarts (readers told to discard) and ends with the exact text
    _assert_exact(outcomes, WORDS)
    assert [o.restarts for o in outcomes] == [1] * len(outcomes)
    restart_after = [
        next(t for t, e in zip(o.arrivals, o.events, strict=True) if e.event == "restart") - killed_at for o in outcomes
    ]
    record(scenario="celery worker kill -9", recovery_s=round(max(restart_after), 2), lost=0, duplicated=0)
    assert max(restart_after) < 12


def test_a_worker_paused_for_2_s_keeps_its_generations(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given generations running on worker A, with worker B idle beside it (default settings)
    stack = make_stack(**DEFAULTS)
    stack.start("web")
    stack.start("consumer")
    stack.start("worker-a", "worker")
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 100}) for _ in range(3)]
    readers = _readers(stack, generations)
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=5)
    stack.start("worker-b", "worker")
    stack.wait_ready(workers=2)
    # When worker A stops for 2 s, then goes on
    stack.signal("worker-a", signal.SIGSTOP)
    time.sleep(2)  # a fixed wait, the scenario: the pause, shorter than DEAD_AFTER_MS (2.5 s)
    stack.signal("worker-a", signal.SIGCONT)
    outcomes = read_all(readers)
    # Then no generation started again: each reader has the exact text of its first attempt (observed until every
    # generation ended)
    _assert_exact(outcomes, WORDS)
    restarts = sum(o.restarts for o in outcomes)
    record(scenario="celery worker SIGSTOP 2 s", restarts=restarts, lost=0, duplicated=0)
    assert restarts == 0


def test_a_redelivered_task_never_interleaves_with_the_live_one(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    from celery import Celery

    # Given a broker whose visibility timeout (2 s) is shorter than the generations (~5 s)
    stack = make_stack(CELERY_VISIBILITY_TIMEOUT_S="2")
    stack.start("web")
    stack.start("consumer")
    stack.start("worker-a", "worker")
    stack.start("worker-b", "worker")
    stack.wait_ready(workers=2)
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 80}) for _ in range(3)]
    readers = _readers(stack, generations)
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=3)
    # When the broker's sweep redelivers the still-running tasks (kombu's own restore of unacked messages)
    time.sleep(2.5)  # a fixed wait, the scenario: the visibility timeout (2 s) runs out while the tasks run
    celery = Celery(broker=stack.redis.url)
    celery.conf.broker_transport_options = {"visibility_timeout": 2}
    with celery.connection_for_write() as connection:
        connection.default_channel.qos.restore_visible(num=100, interval=1)
    outcomes = read_all(readers)
    # Then the copies were refused and wrote nothing: no restart, exact text
    _assert_exact(outcomes, WORDS)
    assert all(o.restarts == 0 for o in outcomes)
    logs = "".join((stack.logs / f"{name}.log").read_text() for name in ("worker-a", "worker-b"))
    refused = logs.count("not started: held")
    record(scenario="redelivery while alive", redelivered=refused, refused=refused, lost=0, duplicated=0)
    assert refused == len(generations)


def test_a_poison_entry_is_dead_lettered_and_other_generations_flow(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    stack = make_stack(PROCESSORS="tests.support.fault_processors:PoisonOnMarker", DEAD_LETTER_AFTER="3")
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    bad = stack.create(model="echo", prompt="fine so far POISON never seen", options={"delay_ms": 20})
    good = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 10}) for _ in range(3)]
    started = time.monotonic()
    bad_outcome, *good_outcomes = read_all(_readers(stack, [bad, *good]))
    assert bad_outcome.terminal is not None and bad_outcome.terminal.data["code"] == "poison_entry"
    assert bad_outcome.text == "fine so far "
    _assert_exact(good_outcomes, WORDS)
    client = stack.client()
    assert client.xlen(keys.DEAD_LETTERS) == 1
    assert not client.exists(keys.gen_raw(bad["id"]))  # nothing pending: acknowledged, deleted with the end
    record(scenario="poison entry", ended_after_s=round(time.monotonic() - started, 2), dead_letters=1)


def test_redis_outage_then_everything_recovers_without_restarts(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given long generations being read
    stack = make_stack(LEASE_MS="30000", REDIS_RETRY_S="60")
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 150}) for _ in range(3)]
    readers = _readers(stack, generations)
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=3)
    # When Redis is stopped for 6 s
    stack.redis.stop()
    down_at = time.monotonic()
    time.sleep(1)  # a fixed wait, the scenario: the requests below are made 1 s into the outage
    create = stack.post("/v1/generations", {"model": "echo", "prompt": "x"})
    ready = stack.get("/readyz")
    time.sleep(max(0.0, 6 - (time.monotonic() - down_at)))  # a fixed wait, the scenario: the rest of the 6 s
    stack.redis.start()
    up_at = time.monotonic()
    # Then the API answered 503 with Retry-After meanwhile, and every reader ends with the exact text
    assert create.status_code == 503 and create.headers["retry-after"]
    assert create.json()["error"]["code"] == "redis_unavailable"
    assert ready.status_code == 503 and ready.json()["status"] == "unhealthy"
    outcomes = read_all(readers)
    _assert_exact(outcomes, WORDS)
    # And new work flows without restarting any process
    after = stack.create(model="echo", prompt="back again")
    fresh = read_all(_readers(stack, [after]))
    _assert_exact(fresh, "back again")
    assert all(p.poll() is None for p in stack.processes.values())
    first_after = min(t for o in outcomes for t in o.arrivals if t > up_at)
    record(scenario="redis outage 6 s", recovery_s=round(first_after - up_at, 2), lost=0, duplicated=0)


def test_graceful_deploy_of_web_consumer_and_worker_loses_nothing(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    stack = make_stack(CELERY_SOFT_SHUTDOWN_S="2", LEASE_MS="5000", CONSUMER_CLAIM_IDLE_MS="3000")
    stack.start("web-a", "web")
    stack.start("web-b", "web")
    stack.start("consumer-a", "consumer")
    stack.start("consumer-b", "consumer")
    stack.start("worker-a", "worker")
    stack.wait_ready(consumers=2)
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 100}) for _ in range(4)]
    readers = _readers(stack, generations, webs=[0, 1])
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=3)
    stack.start("worker-b", "worker")
    stack.wait_ready(consumers=2, workers=2)
    # And an idle keep-alive connection to web-a, as a proxy in front keeps them (WEB_KEEPALIVE_S)
    idle = http.client.HTTPConnection(f"127.0.0.1:{stack.web_ports[0]}", timeout=10)
    idle.request("GET", "/healthz")
    assert idle.getresponse().read()
    timings: dict[str, float] = {}
    # When each process type gets SIGTERM in turn, as a rolling deploy does, readers reconnecting to web-a meanwhile
    for name in ("web-a", "consumer-a", "worker-a"):
        stack.signal(name, signal.SIGTERM)
        late = _late_readers(stack.web_ports[0], generations[0], stack.headers) if name == "web-a" else None
        timings[name] = round(stack.wait_stopped(name, 40), 2)
        if late is not None:
            late.join(10)
        stack.processes[f"gone-{name}"] = stack.processes.pop(name)
    idle.close()
    outcomes = read_all(readers)
    # Then every reader still ends with the exact text
    _assert_exact(outcomes, WORDS)
    record(
        scenario="graceful deploy", stop_s=timings, reconnects=sum(o.reconnects for o in outcomes), lost=0, duplicated=0
    )
    # And no process waited out its graceful timeout (web's is 20 s): not for the idle connection, nor for the
    # streams that began as it was stopping
    assert timings["web-a"] < 5 and timings["consumer-a"] < 5
    # And web's graceful stop logged no error (an idle keep-alive connection closed is not one)
    assert "Error handling request" not in (stack.logs / "web-a.log").read_text()


def test_a_worker_given_sigterm_hands_its_generations_back_after_its_soft_shutdown(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given answers that need 12 s, running on worker A (gevent pool, REMAP_SIGTERM=SIGQUIT as in the Procfile), and
    # worker B ready beside it
    stack = make_stack(**DEFAULTS, CELERY_SOFT_SHUTDOWN_S="2")
    stack.start("web")
    stack.start("consumer")
    stack.start("worker-a", "worker")
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 200}) for _ in range(3)]
    readers = _readers(stack, generations)
    for reader in readers:
        reader.start()
    _wait_streaming(readers, events=3)
    stack.start("worker-b", "worker")
    stack.wait_ready(workers=2)
    # When A gets SIGTERM while they run (A is idle between tokens: the signal lands in gevent's event loop)
    stack.signal("worker-a", signal.SIGTERM)
    stopped_s = stack.wait_stopped("worker-a", 30)
    stack.processes["gone-worker-a"] = stack.processes.pop("worker-a")
    outcomes = read_all(readers)
    record(scenario="worker SIGTERM, answers longer than its soft shutdown", stop_s=round(stopped_s, 2))
    # Then A stopped once its 2 s of soft shutdown were over (plus Celery's 2 s loop turn), not when the answers
    # ended, and its soft shutdown ran (it used to fail in the event loop: "Unrecoverable error")
    assert stopped_s < 8
    log = (stack.logs / "worker-a.log").read_text()
    assert "Unrecoverable error" not in log and "BlockingSwitchOutError" not in log
    # And B ran them again from the start: every reader has the whole text after its restart
    _assert_exact(outcomes, WORDS)
    assert all(o.restarts >= 1 for o in outcomes)


def test_a_worker_given_sigterm_exits_even_when_redis_is_gone(make_stack: Callable[..., Stack]) -> None:
    # Given a worker running generations (Redis is its broker too); its 3 s of soft shutdown span one of Celery's
    # worker heartbeats (every 2 s), whose publish then retries while holding the lock the shutdown needs
    stack = make_stack(**DEFAULTS, CELERY_SOFT_SHUTDOWN_S="3")
    stack.start("web")
    stack.start("consumer")
    stack.start("worker")
    stack.wait_ready()
    generations = [stack.create(model="echo", prompt=WORDS, options={"delay_ms": 200}) for _ in range(5)]
    wait_for(
        lambda: all(stack.get(f"/v1/generations/{g['id']}").json()["text"] for g in generations),
        timeout_s=30,
        interval_s=0.2,
        message="the generations never started on the worker",
    )
    # When Redis dies for good and the worker gets SIGTERM
    assert stack.redis.process is not None
    stack.redis.process.kill()
    stack.signal("worker", signal.SIGTERM)
    # Then the worker still exits, soon after its soft shutdown (tasks.shutdown.SHUTDOWN_GRACE_S): it used to wait
    # on its broker for ever (Celery's heartbeat retried its publish holding the lock its shutdown waited for)
    stopped_s = stack.wait_stopped("worker", 30)
    assert stopped_s < 3 + SHUTDOWN_GRACE_S + 3


def _late_readers(port: int, generation: dict[str, object], headers: dict[str, str]) -> threading.Thread:
    """For a second, a new reader of ``generation`` on ``port`` every 50 ms, each kept open until web ends it."""

    def read_one() -> None:
        try:
            with httpx.stream(
                "GET", f"http://127.0.0.1:{port}{generation['events_url']}", headers=headers, timeout=30
            ) as response:
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass  # refused: the listener is closed, as it should be by then

    def open_readers() -> None:
        threads = []
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            thread = threading.Thread(target=read_one, daemon=True)
            thread.start()
            threads.append(thread)
            time.sleep(0.05)  # pacing: a new reader every 50 ms
        for thread in threads:
            thread.join(30)

    thread = threading.Thread(target=open_readers, daemon=True)
    thread.start()
    return thread


def test_a_reader_that_stops_reading_does_not_slow_the_others_and_is_freed(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    import socket

    stack = make_stack(WEB_CONCURRENCY="1", SSE_SEND_TIMEOUT_S="2", CLIENT_QUEUE_SIZE="64")
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    gen = stack.create(model="synthetic", prompt="big", max_tokens=20000, options={"tokens_per_second": 5000})
    # Given a client that sends its request and then never reads
    stalled = socket.create_connection(("127.0.0.1", stack.web_ports[0]))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET {gen['events_url']} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer e2e-key\r\n\r\n".encode())
    # When normal readers read the same generation
    outcomes = read_all(_readers(stack, [gen, gen]))
    # Then they get all of it
    for outcome in outcomes:
        assert outcome.terminal is not None and outcome.terminal.event == "done"
        assert outcome.duplicates == 0 and outcome.seq_gaps == 0
        assert len([e for e in outcome.events if e.event == "token"]) == 20000

    # And the stalled client's stream is dropped within the send timeout, freeing its greenlet
    def open_streams() -> float:
        for line in httpx.get(stack.url("/metrics"), timeout=5).text.splitlines():
            if line.startswith('tokenbridge_open_streams{transport="sse"}'):
                return float(line.split()[-1])
        return 0.0

    freed_from = time.monotonic()
    wait_for(lambda: open_streams() == 0, timeout_s=30, message="stalled stream freed")
    record(scenario="stalled reader", freed_s=round(time.monotonic() - freed_from, 2))
    stalled.close()


@pytest.mark.parametrize(
    ("options", "terminal", "code"),
    [
        ({"fail_before_first": 2}, "done", None),
        ({"fail_after_tokens": 5}, "error", "provider_error"),
        ({"stall_after_tokens": 3}, "error", "provider_timeout"),
        ({"tokens_per_second": 5}, "error", "max_duration"),
    ],
    ids=["retried-before-first-token", "error-after-tokens", "silent-provider", "max-duration"],
)
def test_provider_failures_end_cleanly(
    make_stack: Callable[..., Stack], options: dict[str, int], terminal: str, code: str | None
) -> None:
    stack = make_stack(PROVIDER_IDLE_TIMEOUT_S="1.5", PROVIDER_RETRY_BASE_MS="100", GENERATION_MAX_DURATION_S="3")
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    gen = stack.create(model="synthetic", prompt="p", max_tokens=20, options={"tokens_per_second": 500, **options})
    [outcome] = read_all(_readers(stack, [gen]))
    assert outcome.terminal is not None and outcome.terminal.event == terminal
    assert outcome.duplicates == 0 and outcome.seq_gaps == 0
    if code is not None:
        assert outcome.terminal.data["code"] == code
        assert stack.get(f"/v1/generations/{gen['id']}").json()["status"] == "failed"
    else:
        assert len([e for e in outcome.events if e.event == "token"]) == 20


def test_a_held_generation_waits_for_the_operator_and_continues_after_a_replay(
    make_stack: Callable[..., Stack], record: Callable[..., None]
) -> None:
    # Given a moderation step that fails on one token until it is repaired, and generations held on failure
    stack = make_stack(
        PROCESSORS="tests.support.fault_processors:FixablePoison", DEAD_LETTER_AFTER="2", DEAD_LETTER_HOLD_S="120"
    )
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    prompt = "fine so far POISON and then the rest"
    held = stack.create(model="echo", prompt=prompt, options={"delay_ms": 20})
    [reader] = _readers(stack, [held])
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # When its entry has failed its deliveries
    wait_for(
        lambda: stack.get("/v1/dead-letters", headers=admin).json()["total"] == 1,
        timeout_s=30,
        message="a dead letter",
    )
    [letter] = stack.get("/v1/dead-letters", headers=admin).json()["data"]
    # Then the generation waits (still running, nothing after the entry), and only an admin sees the letter
    assert letter["held"] and letter["generation_id"] == held["id"]
    waiting = stack.get(f"/v1/generations/{held['id']}").json()
    assert (waiting["status"], waiting["text"]) == ("running", "fine so far ")
    assert stack.get("/v1/dead-letters").status_code == 403
    # And once the backend is repaired and the operator replays the entry, the reader gets the whole answer
    stack.client().set(FixablePoison.FIXED_KEY, "1")
    started = time.monotonic()
    replay = stack.post(f"/v1/dead-letters/{letter['id']}/replay", headers=admin)
    assert replay.status_code == 202
    [outcome] = read_all([reader])
    _assert_exact([outcome], prompt)
    assert stack.get("/v1/dead-letters", headers=admin).json()["total"] == 0
    record(scenario="held dead letter replayed", ended_after_s=round(time.monotonic() - started, 2))


def test_a_dead_letter_of_an_ended_generation_cannot_be_replayed_but_can_be_dropped(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(PROCESSORS="tests.support.fault_processors:PoisonOnMarker", DEAD_LETTER_AFTER="2")
    for name in ("web", "worker", "consumer"):
        stack.start(name)
    stack.wait_ready()
    bad = stack.create(model="echo", prompt="POISON at once")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    wait_for(
        lambda: stack.get(f"/v1/generations/{bad['id']}").json()["status"] == "failed",
        timeout_s=30,
        message="the failure",
    )
    [letter] = stack.get("/v1/dead-letters", headers=admin).json()["data"]
    assert not letter["held"]
    refused = stack.post(f"/v1/dead-letters/{letter['id']}/replay", headers=admin)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "generation_finished")
    # The command line lists and drops it
    cli = [sys.executable, "-m", "tokenbridge.cli", "--url", stack.base_url, "--api-key", ADMIN_KEY, "dead-letters"]
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=30, check=True)
    assert letter["id"] in listed.stdout and "ended" in listed.stdout
    dropped = subprocess.run([*cli, "drop", letter["id"]], capture_output=True, text=True, timeout=30, check=True)
    assert f"dropped {letter['id']}" in dropped.stdout
    gone = httpx.delete(stack.url(f"/v1/dead-letters/{letter['id']}"), headers=admin)
    assert gone.status_code == 404

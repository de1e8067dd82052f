"""Heartbeats (bridge.liveness) on a real Redis: a dead consumer's generations and a dead worker's attempts move as
soon as the heartbeat stops, not after the idle time or the lease; a process that only paused keeps its work."""

from __future__ import annotations

import time
from typing import Any

import redis

from bridge import keys, liveness
from bridge.embedded import EmbeddedRedis
from bridge.producer import GenerationWriter
from bridge.scripts import Status
from bridge.settings import Settings
from tests.support import holds_for, new_generation, wait_for
from workers.consumer import ConsumerWorker
from workers.processors import default_processors
from workers.supervision import Supervisor

DEAD_AFTER_MS = 400


def _settings(settings: Settings) -> Settings:
    # The idle takeover (the backstop) far away: only the heartbeat can move the work here.
    return settings.model_copy(update={"dead_after_ms": DEAD_AFTER_MS, "consumer_claim_idle_ms": 60_000})


def _consumer(r: redis.Redis, settings: Settings, name: str) -> ConsumerWorker:
    return ConsumerWorker(r, settings, default_processors(r), name=name)


def test_a_heartbeat_stamps_its_process_until_stopped_and_then_it_is_dead(r: redis.Redis) -> None:
    # Given a heartbeat of "w1" in a registry
    beat = liveness.Heartbeat(r, keys.WORKERS_ZSET, "w1", dead_after_ms=DEAD_AFTER_MS)
    beat.start()
    try:
        # Then for longer than its death time it stays alive, stamped by its own thread
        holds_for(
            lambda: liveness.dead(r, keys.WORKERS_ZSET, DEAD_AFTER_MS) == [],
            window_s=DEAD_AFTER_MS * 2 / 1000,
            interval_s=0.05,
            why="two death times (DEAD_AFTER_MS): without its thread's stamps it would be dead after one",
        )
        assert beat.may_judge_others()
    finally:
        beat.stop()
    # When it stops stamping, it is dead once its last stamp is older than the death time
    assert not beat.may_judge_others()
    wait_for(lambda: liveness.dead(r, keys.WORKERS_ZSET, DEAD_AFTER_MS) == ["w1"], timeout_s=3)
    # And a clean stop strikes the name off
    beat.stop(withdraw=True)
    assert r.zscore(keys.WORKERS_ZSET, "w1") is None


def test_a_consumer_whose_heartbeat_stopped_is_taken_over_before_the_idle_time(
    r: redis.Redis, settings: Settings
) -> None:
    settings = _settings(settings)
    # Given consumer A owns a generation, and its heartbeat stopped (A was killed)
    gid = new_generation(r, settings, "gen_1")
    a = _consumer(r, settings, "consumer-a")
    a.run_once(block_ms=50)
    assert gid in a.owned
    r.zadd(keys.CONSUMERS_ZSET, {"consumer-a": int(time.time() * 1000) - DEAD_AFTER_MS - 100})
    # When consumer B, whose own heartbeat has run for a death time, looks for the dead
    b = _consumer(r, settings, "consumer-b")
    b.heartbeat.start()
    try:
        wait_for(b.heartbeat.may_judge_others, timeout_s=3)
        taken = b.ownership.take_over_dead()
    finally:
        b.heartbeat.stop()
    # Then B owns the generation (long before the 60 s idle time), and A, left with nothing, is struck off
    assert [o.generation_id for o in taken] == [gid] and gid in b.owned
    b.ownership.take_over_dead()
    assert r.zscore(keys.CONSUMERS_ZSET, "consumer-a") is None


def test_a_consumer_that_stamps_keeps_its_generations(r: redis.Redis, settings: Settings) -> None:
    settings = _settings(settings)
    # Given consumer A owns a generation and stamps its heartbeat
    gid = new_generation(r, settings, "gen_1")
    a = _consumer(r, settings, "consumer-a")
    a.heartbeat.start()
    b = _consumer(r, settings, "consumer-b")
    b.heartbeat.start()
    try:
        a.run_once(block_ms=50)
        # When B looks for the dead for three death times, it takes nothing over
        holds_for(
            lambda: b.ownership.take_over_dead() == [],
            window_s=3 * DEAD_AFTER_MS / 1000,
            interval_s=0.05,
            why="three death times (DEAD_AFTER_MS): had A's stamps stopped counting, B would have taken over by then",
        )
    finally:
        a.heartbeat.stop()
        b.heartbeat.stop()
    # Then A still owns it
    assert gid in a.owned and gid not in b.owned


def test_the_attempt_of_a_worker_whose_heartbeat_stopped_is_released_and_started_again(
    r: redis.Redis, settings: Settings
) -> None:
    settings = _settings(settings)
    # Given an attempt claimed by worker w1 (a 60 s lease), and another generation claimed by live worker w2
    dead_gid, live_gid = new_generation(r, settings, "gen_1"), new_generation(r, settings, "gen_2")
    GenerationWriter(r, dead_gid, lease_ms=60_000, max_length=100, worker="w1").claim()
    GenerationWriter(r, live_gid, lease_ms=60_000, max_length=100, worker="w2").claim()
    now_ms = int(time.time() * 1000)
    r.zadd(keys.WORKERS_ZSET, {"w1": now_ms - DEAD_AFTER_MS - 100, "w2": now_ms})
    enqueued: list[str] = []
    supervisor = Supervisor(r, settings, enqueued.append)
    # When a consumer supervises them
    supervisor.release_dead_workers([dead_gid, live_gid])
    supervisor.supervise([dead_gid, live_gid])
    # Then w1's attempt lost its lease and a new attempt is on its way; w2's is untouched
    assert not r.exists(keys.gen_lease(dead_gid)) and enqueued == [dead_gid]
    assert r.get(keys.gen_lease(live_gid)) == "1"
    # And the new attempt, claimed by another worker, is named by it and restarts the generation
    writer = GenerationWriter(r, dead_gid, lease_ms=60_000, max_length=100, worker="w3")
    assert writer.claim(reason="worker_lost") is Status.CLAIMED and writer.attempt == 2
    assert r.hget(keys.gen_meta(dead_gid), "worker") == "w3"
    restart: Any = r.xrange(keys.gen_raw(dead_gid))[-1][1]
    assert restart["type"] == "restart"


def test_a_task_not_started_that_a_dead_worker_may_have_taken_is_sent_again_at_once(
    r: redis.Redis, settings: Settings
) -> None:
    # Given re-sends after a minute, and two generations not started: one sent before worker w1 stopped stamping
    # (w1 may have taken its task and died before claiming it), one sent after
    settings = _settings(settings).model_copy(update={"task_resend_s": 60, "queue_timeout_s": 600})
    now_ms = int(time.time() * 1000)
    w1_last_stamp = now_ms - DEAD_AFTER_MS - 100
    maybe_taken, sent_after = new_generation(r, settings, "gen_1"), new_generation(r, settings, "gen_2")
    r.hset(keys.gen_meta(maybe_taken), "created_at", (w1_last_stamp - 1_000) / 1000)
    r.zadd(keys.WORKERS_ZSET, {"w1": w1_last_stamp})
    sent: list[str] = []
    supervisor = Supervisor(r, settings, sent.append)
    # When a consumer supervises them, twice
    for _ in range(2):
        lost_before_ms = supervisor.release_dead_workers([maybe_taken, sent_after])
        supervisor.supervise([maybe_taken, sent_after], lost_before_ms=lost_before_ms)
    # Then the task w1 may have taken is sent again at once, and only once; the other one is left to wait
    assert sent == [maybe_taken]
    assert r.hget(keys.gen_meta(maybe_taken), "resends") == "1"
    assert r.hget(keys.gen_meta(sent_after), "resends") in (None, "0")


def test_a_process_started_while_redis_is_away_stamps_once_it_answers(tmp_path: Any) -> None:
    # Given a Redis that is not up yet (restarting, or loading its data), and a heartbeat on it
    server = EmbeddedRedis(tmp_path, appendonly=False)
    client = redis.Redis(port=server.port, socket_connect_timeout=1, decode_responses=True)
    beat = liveness.Heartbeat(client, keys.CONSUMERS_ZSET, "c1", dead_after_ms=DEAD_AFTER_MS)
    try:
        # When the process starts, it does not fail for that
        beat.start()
        assert beat.running and not beat.may_judge_others()
        # Then once Redis is up it is stamped, and judges others only after a whole death time of stamps
        server.start()
        wait_for(lambda: client.zscore(keys.CONSUMERS_ZSET, "c1") is not None, timeout_s=10)
        assert not beat.may_judge_others()
        wait_for(beat.may_judge_others, timeout_s=5)
    finally:
        beat.stop()
        client.close()
        server.stop()

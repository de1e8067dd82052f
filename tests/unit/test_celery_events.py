"""What a consumer tells Flower: one Celery task event per state change of a generation, mapped from its events."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from bridge.events import Event
from workers.celery_events import PROCESS_TASK, CeleryEvents, task_id, worker_hostname
from workers.processors import GenerationState


@pytest.fixture
def events() -> Iterator[CeleryEvents]:
    app = Celery("test-events", broker="memory://")
    yield CeleryEvents(app, "host-1-abc")
    app.close()


def _state(gid: str = "gen_1", **kw: Any) -> GenerationState:
    return GenerationState(generation_id=gid, model="echo", session_id="s1", **kw)


def _sent(events: CeleryEvents) -> list[tuple[str, dict[str, Any]]]:
    sent = list(events.pending)
    events.pending.clear()
    return sent


def test_the_consumer_is_a_worker_and_its_generation_a_task_named_after_both() -> None:
    assert worker_hostname("host-1-abc") == "consumer@host-1-abc"
    assert task_id("gen_1", "host-1-abc") == "gen_1@host-1-abc"


def test_a_generation_that_completes_is_received_started_once_and_succeeded(events: CeleryEvents) -> None:
    # Given a generation the consumer takes
    state = _state(completion_tokens=3)
    events.received(state, taken_over=False)
    # When three batches are processed, then done is committed
    for _ in range(3):
        events.started("gen_1")
    events.ended(state, Event(id="5-0", type="done", data={"finish_reason": "stop", "usage": {}}))
    # Then Flower gets three events for it, all on one task id
    sent = _sent(events)
    assert [t for t, _ in sent] == ["task-received", "task-started", "task-succeeded"]
    assert {f["uuid"] for _, f in sent} == {"gen_1@host-1-abc"}
    received, _, succeeded = (f for _, f in sent)
    assert received["name"] == PROCESS_TASK
    assert ast.literal_eval(received["args"]) == ["gen_1"]
    assert ast.literal_eval(received["kwargs"]) == {"model": "echo", "session_id": "s1", "taken_over": False}
    assert ast.literal_eval(succeeded["result"]) == {"finish_reason": "stop", "completion_tokens": 3}
    assert succeeded["runtime"] >= 0
    assert all(isinstance(f["timestamp"], float) for _, f in sent)
    assert events.processed == 1


def test_an_error_is_a_failure_with_its_code_and_a_cancellation_a_revocation(events: CeleryEvents) -> None:
    failed, cancelled = _state("gen_e"), _state("gen_c")
    events.received(failed, taken_over=False)
    events.received(cancelled, taken_over=True)
    _sent(events)
    events.ended(failed, Event(id="2-0", type="error", data={"code": "poison_entry", "message": "Entry 1-0 ..."}))
    events.ended(cancelled, Event(id="3-0", type="cancelled", data={}))
    (failure_type, failure), (revoked_type, revoked) = _sent(events)
    assert failure_type == "task-failed" and "poison_entry" in failure["exception"]
    assert failure["uuid"] == "gen_e@host-1-abc"
    assert revoked_type == "task-revoked" and revoked["uuid"] == "gen_c@host-1-abc"
    assert revoked["terminated"] is False


def test_a_generation_handed_on_is_retried_elsewhere_and_then_forgotten(events: CeleryEvents) -> None:
    state = _state()
    events.received(state, taken_over=False)
    _sent(events)
    events.handed_on("gen_1", "taken over by another consumer")
    # Nothing more about it: it is another consumer's task now
    events.started("gen_1")
    events.ended(state, Event(id="5-0", type="done", data={}))
    sent = _sent(events)
    assert [(t, f["uuid"]) for t, f in sent] == [("task-retried", "gen_1@host-1-abc")]
    assert "taken over by another consumer" in sent[0][1]["exception"]


def test_a_generation_whose_streams_vanished_is_revoked_as_expired(events: CeleryEvents) -> None:
    events.received(_state(), taken_over=False)
    _sent(events)
    events.vanished("gen_1")
    assert [(t, f["expired"]) for t, f in _sent(events)] == [("task-revoked", True)]


def test_the_heartbeat_says_how_many_generations_run_and_how_often_it_comes(events: CeleryEvents) -> None:
    events.received(_state("gen_1"), taken_over=False)
    events.received(_state("gen_2"), taken_over=False)
    fields = events._worker_fields()
    assert fields["freq"] == 2.0 and fields["active"] == 2 and fields["processed"] == 0
    assert fields["sw_ident"] == "tokenbridge-consumer"


def test_recording_never_blocks_and_keeps_the_newest_when_the_broker_is_away() -> None:
    app = Celery("test-events", broker="memory://")
    events = CeleryEvents(app, "host-1-abc", buffer_size=4)
    for i in range(10):
        events.received(_state(f"gen_{i}"), taken_over=False)
    assert [f["uuid"] for _, f in events.pending] == [f"gen_{i}@host-1-abc" for i in range(6, 10)]
    app.close()

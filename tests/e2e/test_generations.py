"""End to end over HTTP against web, worker and consumer started from the Procfile."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from typing import Any

import orjson
import pytest

from bridge import keys
from bridge.connections import close
from bridge.version import VERSION
from tests.support import wait_for
from tests.support.sse import SseEvent, read_sse
from tests.support.stack import API_KEY_OWNER, Stack

pytestmark = pytest.mark.e2e

PROMPT = "The quick brown fox  jumps over\nthe lazy dog, again and again: tokens in order!"


def _text(events: list[SseEvent]) -> str:
    return "".join(e.data["content"] for e in events if e.event == "token")


def test_echo_streams_the_prompt_back_exactly_and_ends_with_one_done(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt=PROMPT)
    assert gen["status"] == "queued" and gen["id"].startswith("gen_")
    result = stack.events(gen)
    assert result.status == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"
    assert _text(result.events) == PROMPT
    assert [e.data["seq"] for e in result.events] == list(range(len(result.events)))
    assert [e.event for e in result.events if e.event in ("done", "error", "cancelled")] == ["done"]
    assert result.events[-1].event == "done"
    assert result.events[-1].data["finish_reason"] == "stop"
    assert result.ended_by_server


def test_get_shows_the_completed_generation_and_its_text(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt=PROMPT, session_id="get-test")
    stack.events(gen)
    body = stack.get(f"/v1/generations/{gen['id']}").json()
    assert body["status"] == "completed"
    assert body["text"] == PROMPT
    assert body["session_id"] == "get-test"
    assert body["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len([w for w in PROMPT.split()])
    assert body["created_at"] <= body["started_at"] <= body["finished_at"]
    assert body["error"] is None


def test_a_reader_that_disconnects_resumes_with_last_event_id_without_gap_or_duplicate(stack: Stack) -> None:
    # Given a reader that read four events and dropped the connection mid-stream
    gen = stack.create(model="echo", prompt=PROMPT, options={"delay_ms": 30})
    first = stack.events(gen, max_events=4)
    assert len(first.events) == 4 and not first.ended_by_server
    # When it reconnects with Last-Event-ID, then once more with ?last_event_id=
    second = stack.events(gen, headers={"Last-Event-ID": first.events[-1].id}, max_events=3)
    third = stack.events(gen, params={"last_event_id": second.events[-1].id})
    # Then the three parts are exactly the generation
    events = first.events + second.events + third.events
    assert _text(events) == PROMPT
    assert [e.data["seq"] for e in events] == list(range(len(events)))
    assert len({e.id for e in events}) == len(events)


def test_five_readers_at_once_all_get_every_event(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt=PROMPT, options={"delay_ms": 10})
    results: list[list[SseEvent]] = []

    def read() -> None:
        results.append(stack.events(gen).events)

    threads = [threading.Thread(target=read) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 5
    assert all(_text(events) == PROMPT for events in results)
    assert len({tuple(e.id for e in events) for events in results}) == 1


def test_a_reconnect_after_the_end_gets_204_and_no_loop(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="short one")
    events = stack.events(gen).events
    again = stack.events(gen, headers={"Last-Event-ID": events[-1].id})
    assert again.status == 204
    replay = stack.events(gen)  # without a cursor: the whole generation again
    assert [e.id for e in replay.events] == [e.id for e in events]


def test_cancel_mid_stream_ends_with_cancelled_within_a_second(stack: Stack) -> None:
    # Given a slow generation that has started streaming
    gen = stack.create(model="echo", prompt=" ".join(["word"] * 200), options={"delay_ms": 100})
    first = stack.events(gen, max_events=1)
    # When it is cancelled
    asked = time.monotonic()
    response = stack.post(f"/v1/generations/{gen['id']}/cancel")
    assert response.status_code == 202
    rest = stack.events(gen, headers={"Last-Event-ID": first.events[-1].id})
    took = time.monotonic() - asked
    # Then the stream ends with one cancelled event within a second
    assert rest.events[-1].event == "cancelled"
    assert took < 1.0
    assert stack.get(f"/v1/generations/{gen['id']}").json()["status"] == "cancelled"
    again = stack.post(f"/v1/generations/{gen['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_finished"


def test_session_events_carry_every_generation_of_the_session(stack: Stack) -> None:
    a = stack.create(model="echo", prompt="first answer", session_id="session-e2e")
    b = stack.create(model="echo", prompt="second answer", session_id="session-e2e")
    result = read_sse(stack.url(a["session_events_url"]), headers=stack.headers, stop_after_terminals=2)
    by_generation: dict[str, list[SseEvent]] = {}
    for event in result.events:
        by_generation.setdefault(event.data["generation_id"], []).append(event)
    assert _text(by_generation[a["id"]]) == "first answer"
    assert _text(by_generation[b["id"]]) == "second answer"
    for events in by_generation.values():
        assert [e.data["seq"] for e in events] == list(range(len(events)))
    # And a session reader resumes too
    resumed = read_sse(
        stack.url(a["session_events_url"]),
        headers={**stack.headers, "Last-Event-ID": result.events[1].id},
        max_events=len(result.events) - 2,
    )
    assert [e.id for e in resumed.events] == [e.id for e in result.events[2:]]


def test_synthetic_streams_max_tokens_tokens(stack: Stack) -> None:
    gen = stack.create(model="synthetic", prompt="load", max_tokens=50, options={"tokens_per_second": 2000})
    events = stack.events(gen).events
    assert len([e for e in events if e.event == "token"]) == 50
    assert events[-1].data["finish_reason"] == "length"


def test_idle_streams_get_keep_alive_comments(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="slow words here", options={"delay_ms": 1500})
    result = stack.events(gen)
    assert "keep-alive" in result.comments
    assert _text(result.events) == "slow words here"


def test_stream_token_reads_its_own_generation_only(stack: Stack) -> None:
    a = stack.create(model="echo", prompt="mine")
    b = stack.create(model="echo", prompt="theirs")
    own = read_sse(stack.url(a["events_url"]), params={"token": a["stream_token"]})
    assert _text(own.events) == "mine"
    other = stack.get(b["events_url"], headers={"Authorization": ""}, params={"token": a["stream_token"]})
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "forbidden"
    session = read_sse(stack.url(a["session_events_url"]), params={"token": a["session_stream_token"]}, max_events=1)
    assert session.status == 200


def test_a_connection_idle_longer_than_gunicorns_default_keep_alive_takes_the_next_post(stack: Stack) -> None:
    # What a proxy in front does with its idle connections to web (WEB_KEEPALIVE_S in gunicorn.conf.py)
    address = stack.base_url.removeprefix("http://")
    connection = http.client.HTTPConnection(address, timeout=10)
    body = orjson.dumps({"model": "echo", "prompt": "kept alive"})
    headers = {**stack.headers, "Content-Type": "application/json"}
    try:
        # Given a connection that answered one request and then sat idle past gunicorn's own 2 s default
        connection.request("GET", "/healthz")
        assert orjson.loads(connection.getresponse().read())["status"] == "ok"
        first_socket = connection.sock
        time.sleep(2.5)  # a fixed wait, the scenario: idle past gunicorn's 2 s default keep-alive
        # When a submission is sent on it
        connection.request("POST", "/v1/generations", body=body, headers=headers)
        response = connection.getresponse()
        # Then it is answered on that same connection
        assert response.status == 202, response.read()
        assert connection.sock is first_socket
    finally:
        connection.close()


def test_page_and_health_endpoints(stack: Stack) -> None:
    page = stack.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and "<form" in page.text and "synthetic" in page.text
    assert stack.get("/healthz").json() == {"status": "ok", "version": VERSION}
    ready = stack.get("/readyz")
    assert ready.status_code == 200
    body: dict[str, Any] = ready.json()
    assert body["status"] == "healthy"
    assert set(body["checks"]) >= {"redis", "consumers", "celery"}
    metrics = stack.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "tokenbridge_hub_watched_keys" in metrics.text


def test_a_cursor_older_than_the_kept_entries_gets_a_reset_with_the_text_so_far(stack: Stack) -> None:
    # Given a finished generation whose stream lost its oldest entries
    gen = stack.create(model="echo", prompt=PROMPT)
    events = stack.events(gen).events
    client = stack.client()
    client.xtrim(f"llm:gen:{{{gen['id']}}}:out", maxlen=3, approximate=False)
    close(client)
    # When a reader resumes from an entry that is gone
    resumed = stack.events(gen, headers={"Last-Event-ID": events[1].id})
    # Then it first gets a reset with the text up to the oldest kept entry, then every kept entry
    reset, *kept = resumed.events
    assert reset.event == "reset"
    assert reset.data["reason"] == "cursor_trimmed"
    assert [e.id for e in kept] == [e.id for e in events[-3:]]
    assert reset.data["next_seq"] == kept[0].data["seq"]
    assert reset.data["text"] + "".join(e.data.get("content", "") for e in kept) == PROMPT
    assert kept[-1].event == "done" and resumed.ended_by_server


def test_the_same_idempotency_key_returns_the_same_generation(stack: Stack) -> None:
    body = {"model": "echo", "prompt": "only once, please"}
    first = stack.post("/v1/generations", body, headers={"Idempotency-Key": "order-42"})
    again = stack.post("/v1/generations", body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _text(stack.events(first.json()).events) == "only once, please"
    # A different body under the same key is refused; another key is a new generation
    other = stack.post("/v1/generations", {**body, "prompt": "something else"}, headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    fresh = stack.post("/v1/generations", body, headers={"Idempotency-Key": "order-43"})
    assert fresh.json()["id"] != first.json()["id"]


def test_concurrent_retries_with_one_idempotency_key_start_one_generation(stack: Stack) -> None:
    ids: list[str] = []

    def post() -> None:
        response = stack.post(
            "/v1/generations", {"model": "echo", "prompt": "race"}, headers={"Idempotency-Key": "race-1"}
        )
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(ids) == 8 and len(set(ids)) == 1


def _reserve_without_generation(
    stack: Stack, idempotency_key: str, body: dict[str, Any], generation_id: str, *, age_s: float
) -> None:
    """What a request that reserved ``idempotency_key`` ``age_s`` ago and died before storing its generation leaves."""
    fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    key = keys.idempotency(API_KEY_OWNER, hashlib.sha256(idempotency_key.encode()).hexdigest())
    record = {"id": generation_id, "session_id": "ses_x", "model": body["model"], "fingerprint": fingerprint}
    client = stack.client()
    client.set(key, orjson.dumps({**record, "reserved_at": time.time() - age_s}), px=60_000)
    close(client)


def test_a_retry_takes_over_a_key_whose_generation_was_never_stored(stack: Stack) -> None:
    # Given a key reserved long ago by a request that died before it stored its generation
    body = {"model": "echo", "prompt": "second time lucky"}
    _reserve_without_generation(stack, "lost-1", body, "gen_neverstored", age_s=60)
    # When the client retries with that key
    response = stack.post("/v1/generations", body, headers={"Idempotency-Key": "lost-1"})
    # Then it gets a generation that runs, not the one that never was
    assert response.status_code == 202
    assert response.json()["id"] != "gen_neverstored"
    assert _text(stack.events(response.json()).events) == "second time lucky"


def test_a_retry_while_the_keys_generation_is_not_stored_gets_409_never_a_generation_that_may_not_exist(
    stack: Stack,
) -> None:
    # Given a key reserved a moment ago by a request that died before it stored its generation
    body = {"model": "echo", "prompt": "not yet"}
    _reserve_without_generation(stack, "in-use-1", body, "gen_notyetstored", age_s=2)
    # When the client retries with that key
    response = stack.post("/v1/generations", body, headers={"Idempotency-Key": "in-use-1"})
    # Then it is told to come back once the reservation may be taken over, not given the id of nothing
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "idempotency_key_in_use"
    assert 1 <= int(response.headers["Retry-After"]) <= 8


def test_stats_and_metrics_reflect_what_streamed(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="count me in the statistics")
    stack.events(gen)

    def echo_counted() -> dict[str, Any] | None:
        echo: dict[str, Any] = stack.get("/v1/stats").json()["models"]["echo"]
        return echo if echo["generations"] >= 1 else None

    echo = wait_for(echo_counted, interval_s=0.1)
    assert echo["tokens"] >= 5
    assert echo["ttft_ms"]["p50"] is not None and echo["ttft_ms"]["p95"] >= echo["ttft_ms"]["p50"]
    assert echo["by_status"]["completed"] >= 1
    text = stack.get("/metrics").text
    assert "tokenbridge_delivery_latency_seconds_count" in text
    assert 'tokenbridge_open_streams{transport="sse"}' in text
    stream_token = stack.get("/v1/stats", headers={"Authorization": ""}, params={"token": gen["stream_token"]})
    assert stream_token.status_code == 403

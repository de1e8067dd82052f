"""External producers over HTTP, and the OpenAI-compatible endpoint driven by the official openai package."""

from __future__ import annotations

import httpx
import pytest
from openai import APIError, OpenAI

from tests.support.sse import read_sse
from tests.support.stack import API_KEY, Stack

pytestmark = pytest.mark.e2e


def _text(events: list[object]) -> str:
    return "".join(e.data["content"] for e in events if e.event == "token")  # type: ignore[attr-defined]


def test_an_external_producer_feeds_a_generation_in_order_and_idempotently(stack: Stack) -> None:
    # Given an external generation being read
    gen = stack.create(model="external", prompt="what the outside model answers")
    tokens = f"/v1/generations/{gen['id']}/tokens"
    # When batches arrive, one of them twice and one overlapping
    assert stack.post(tokens, {"index": 0, "tokens": ["Hello", ", "]}).json()["next_index"] == 2
    again = stack.post(tokens, {"index": 0, "tokens": ["Hello", ", "]})
    assert again.status_code == 202 and again.json() == {"id": gen["id"], "next_index": 2, "duplicate": True}
    assert stack.post(tokens, {"index": 1, "tokens": [", ", "world"]}).json()["next_index"] == 3
    gap = stack.post(tokens, {"index": 7, "tokens": ["?"]})
    assert gap.status_code == 409 and gap.json()["error"]["details"] == {"expected_index": 3}
    done = stack.post(f"/v1/generations/{gen['id']}/complete", {"finish_reason": "stop"})
    assert done.status_code == 202
    # Then readers see each token once and the terminal event
    events = stack.events(gen).events
    assert _text(events) == "Hello, world"
    assert events[-1].event == "done" and events[-1].data["usage"]["completion_tokens"] == 3
    assert stack.get(f"/v1/generations/{gen['id']}").json()["status"] == "completed"
    late = stack.post(tokens, {"index": 3, "tokens": ["late"]})
    assert late.status_code == 409 and late.json()["error"]["code"] == "already_finished"


def test_an_external_producer_can_end_with_an_error(stack: Stack) -> None:
    gen = stack.create(model="external", prompt="x")
    stack.post(f"/v1/generations/{gen['id']}/tokens", {"index": 0, "tokens": ["partial"]})
    response = stack.post(
        f"/v1/generations/{gen['id']}/complete", {"error": {"code": "upstream_down", "message": "gone"}}
    )
    assert response.status_code == 202
    events = stack.events(gen).events
    assert events[-1].event == "error" and events[-1].data["code"] == "upstream_down"


def test_feeding_rules_are_enforced(stack: Stack) -> None:
    echo = stack.create(model="echo", prompt="not external")
    assert stack.post(f"/v1/generations/{echo['id']}/tokens", {"index": 0, "tokens": ["x"]}).status_code == 409
    gen = stack.create(model="external", prompt="x")
    bad = stack.post(f"/v1/generations/{gen['id']}/tokens", {"index": -1, "tokens": []})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["error"]["details"]} == {"index", "tokens"}
    token = httpx.post(
        stack.url(f"/v1/generations/{gen['id']}/tokens"),
        params={"token": gen["stream_token"]},
        json={"index": 0, "tokens": ["x"]},
    )
    assert token.status_code == 403  # a reader's stream token cannot write
    both = stack.post(
        f"/v1/generations/{gen['id']}/complete", {"finish_reason": "stop", "error": {"code": "x", "message": "y"}}
    )
    assert both.status_code == 422


def _client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=20)


def test_the_openai_package_streams_through_the_bridge(stack: Stack) -> None:
    with _client(stack) as client:
        stream = client.chat.completions.create(
            model="echo",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "Streaming through the bridge."},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streaming through the bridge."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_the_openai_package_without_streaming_and_the_generation_header(stack: Stack) -> None:
    with _client(stack) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "All at once, please."}], max_tokens=3
        )
        completion = raw.parse()
    assert completion.choices[0].message.content == "All at once, "
    assert completion.choices[0].finish_reason == "length"
    generation_id = raw.headers["x-tokenbridge-generation-id"]
    watched = read_sse(stack.url(f"/v1/generations/{generation_id}/events"), headers=stack.headers)
    assert _text(watched.events) == "All at once, "


def test_an_openai_stream_cut_short_is_resumed_on_the_events_endpoint(stack: Stack) -> None:
    # Given an OpenAI client that reads three chunks and goes away
    prompt = " ".join(f"w{i}" for i in range(40))
    with (
        _client(stack) as client,
        client.chat.completions.with_streaming_response.create(
            model="echo",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_body={"tokenbridge": {"options": {"delay_ms": 30}}},
        ) as response,
    ):
        generation_id = response.headers["x-tokenbridge-generation-id"]
        received = ""
        for index, chunk in enumerate(response.parse()):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if index == 3:
                break
    # When it picks the answer up again on the resumable stream
    events = read_sse(stack.url(f"/v1/generations/{generation_id}/events"), headers=stack.headers).events
    # Then it gets the whole answer, of which it had a prefix
    assert _text(events) == prompt
    assert prompt.startswith(received) and received


def test_openai_errors_come_back_as_openai_errors(stack: Stack) -> None:
    with _client(stack) as client, pytest.raises(APIError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "Unknown model" in str(info.value)
    with _client(stack) as client:
        stream = client.chat.completions.create(
            model="synthetic",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=20,
            stream=True,
            extra_body={"tokenbridge": {"options": {"tokens_per_second": 1000, "fail_after_tokens": 3}}},
        )
        with pytest.raises(APIError) as failed:
            list(stream)
    assert "synthetic failure" in str(failed.value)


def test_cancelling_an_external_generation_ends_it_and_refuses_more_tokens(stack: Stack) -> None:
    gen = stack.create(model="external", prompt="x")
    stack.post(f"/v1/generations/{gen['id']}/tokens", {"index": 0, "tokens": ["started "]})
    assert stack.post(f"/v1/generations/{gen['id']}/cancel").status_code == 202
    events = stack.events(gen).events
    assert [e.event for e in events] == ["token", "cancelled"]
    more = stack.post(f"/v1/generations/{gen['id']}/tokens", {"index": 1, "tokens": ["more"]})
    assert more.status_code == 409 and more.json()["error"]["code"] == "already_finished"

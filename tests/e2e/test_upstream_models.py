"""Real-model providers through the whole pipeline, against a local server speaking their wire formats."""

from __future__ import annotations

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

PROMPT = "Tokens from a model far away, relayed in order."


def _text(stack: Stack, generation: dict[str, object]) -> tuple[str, dict[str, object]]:
    events = stack.events(generation).events  # type: ignore[arg-type]
    return "".join(e.data["content"] for e in events if e.event == "token"), events[-1].data


def test_an_openai_compatible_model_streams_through_the_bridge(stack: Stack, upstream: FakeUpstream) -> None:
    gen = stack.create(
        model="fake-gpt",
        messages=[{"role": "system", "content": "brief"}, {"role": "user", "content": PROMPT}],
        temperature=0.2,
        stop=["END"],
    )
    text, done = _text(stack, gen)
    assert text == PROMPT
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] == 9  # type: ignore[index]
    sent = next(
        r
        for r in upstream.requests
        if r["path"].endswith("/chat/completions") and r["body"]["messages"][-1]["content"] == PROMPT
    )
    assert sent["body"]["model"] == "gpt-upstream"
    assert sent["body"]["temperature"] == 0.2 and sent["body"]["stop"] == ["END"]
    assert sent["headers"]["Authorization"] == "Bearer sk-openai-secret"


def test_an_anthropic_model_streams_through_the_bridge(stack: Stack, upstream: FakeUpstream) -> None:
    gen = stack.create(model="fake-claude", prompt=PROMPT, max_tokens=3)
    text, done = _text(stack, gen)
    assert text == "Tokens from a "
    assert done["finish_reason"] == "length"
    sent = next(r for r in upstream.requests if r["path"].endswith("/messages") and r["body"]["max_tokens"] == 3)
    assert sent["body"]["model"] == "claude-upstream"
    assert sent["headers"]["x-api-key"] == "sk-ant-secret"


def test_the_registry_lists_models_and_caps_max_tokens(stack: Stack) -> None:
    unknown = stack.post("/v1/generations", {"model": "gpt-9", "prompt": "x"}).json()["error"]
    assert set(unknown["details"][0]["available"]) == {
        "echo",
        "synthetic",
        "external",
        "fake-gpt",
        "fake-gpt-cached",
        "fake-claude",
    }
    capped = stack.post("/v1/generations", {"model": "fake-gpt", "prompt": "x", "max_tokens": 65})
    assert capped.status_code == 422 and capped.json()["error"]["details"][0]["field"] == "max_tokens"

"""The response cache: a model that opts in answers a repeated request from the cache, not from its upstream."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from bridge import cache, keys
from bridge.models import ModelSpec
from tests.support import wait_for
from tests.support.fake_upstream import FakeUpstream
from tests.support.sse import read_sse
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def _answer(stack: Stack, **body: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(text, done data, creation body) of a generation of the caching model."""
    gen = stack.create(model="fake-gpt-cached", **body)
    events = read_sse(stack.url(gen["events_url"]), headers=stack.headers).events
    assert events[-1].event == "done", events[-1]
    return "".join(e.data.get("content", "") for e in events), events[-1].data, gen


def _upstream_calls(upstream: FakeUpstream, word: str) -> int:
    return sum(1 for r in upstream.requests if word in str(r["body"].get("messages")))


def test_a_repeated_request_is_answered_from_the_cache_without_calling_the_model(
    stack: Stack, upstream: FakeUpstream
) -> None:
    word = f"cacheable-{uuid.uuid4().hex[:8]}"
    prompt = f"answer {word} once and only once"
    # Given an answer of a model that caches, completed with stop
    first_text, first_done, gen = _answer(stack, prompt=prompt, temperature=0.2)
    assert not first_done.get("cached") and _upstream_calls(upstream, word) == 1
    spec = ModelSpec(name="fake-gpt-cached", provider="openai", model="gpt-upstream")
    with stack.client() as client:
        key = cache.cache_key(spec, orjson.loads(client.get(keys.gen_request(gen["id"]))))
        wait_for(lambda: client.exists(key), timeout_s=10)
    # When the same request comes again
    second_text, second_done, _ = _answer(stack, prompt=prompt, temperature=0.2)
    # Then it streams the same answer, says it came from the cache, and the upstream was not called
    assert second_text == first_text == prompt
    assert second_done["cached"] is True and second_done["finish_reason"] == "stop"
    assert _upstream_calls(upstream, word) == 1
    # But a request with other sampling parameters is a miss
    _answer(stack, prompt=prompt, temperature=0.9)
    assert _upstream_calls(upstream, word) == 2

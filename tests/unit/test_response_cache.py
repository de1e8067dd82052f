"""The response cache: which requests share an answer, what is stored, and the caching processor (fakeredis)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import fakeredis
import orjson
import pytest

from bridge import keys
from bridge.cache import CachedAnswer, cache_key, lookup, store
from bridge.events import Event, encode_out
from bridge.generation import GenerationRequest
from bridge.models import ModelSpec
from workers.processors import CachingProcessor, GenerationState

SPEC = ModelSpec(name="cached", provider="openai", base_url="http://127.0.0.1:9/v1", model="gpt-x", cache_ttl_s=60)

REQUEST: dict[str, Any] = {
    "model": "cached",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "max_tokens": 50,
    "temperature": 0.2,
    "stop": ["\n\n"],
    "options": {"top_p": 0.9},
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "session_id": "s1",
    "metadata": {"user": "u1"},
}

# What may differ between two requests that get the same answer: where the answer goes, not what it is.
NOT_KEYED = {"model", "session_id", "metadata", "user"}

PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

CHANGED: dict[str, Any] = {
    "prompt": "Hi",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 51,
    "temperature": 0.3,
    "stop": ["\n"],
    "options": {"top_p": 0.8},
    "tools": [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}],
    "tool_choice": "none",
    "top_p": 0.5,
    "top_k": 40,
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
}


def test_the_same_request_gets_the_same_key_whatever_the_order_of_its_fields() -> None:
    reordered = {name: REQUEST[name] for name in reversed(REQUEST)}
    reordered["options"] = {"top_p": 0.9}
    assert cache_key(SPEC, REQUEST) == cache_key(SPEC, dict(REQUEST)) == cache_key(SPEC, reordered)
    assert re.fullmatch(r"llm:cache:\{cached\}:[0-9a-f]{64}", cache_key(SPEC, REQUEST))


def test_every_field_of_a_request_but_session_and_metadata_is_in_the_key() -> None:
    # A field added to the request later must be keyed here, or named as one that cannot change the answer.
    assert set(GenerationRequest.model_fields) - NOT_KEYED == set(CHANGED)


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_any_keyed_field_changes_the_key(field: str) -> None:
    assert cache_key(SPEC, {**REQUEST, field: CHANGED[field]}) != cache_key(SPEC, REQUEST)
    if field in REQUEST:
        assert cache_key(SPEC, {k: v for k, v in REQUEST.items() if k != field}) != cache_key(SPEC, REQUEST)


@pytest.mark.parametrize(
    "change",
    [{"session_id": "s2"}, {"metadata": {"user": "u2"}}, {"metadata": None}, {"session_id": None}, {"user": "u9"}],
)
def test_session_metadata_and_the_end_user_do_not_change_the_key(change: dict[str, Any]) -> None:
    assert cache_key(SPEC, {**REQUEST, **change}) == cache_key(SPEC, REQUEST)


def test_the_keys_of_requests_without_the_later_fields_stay_what_they_were() -> None:
    # Sampling fields and response_format came later: a deploy that adds them does not empty the cache.
    assert cache_key(SPEC, REQUEST).endswith(":dc56a89ef8c753805171d1a0b031d726a11acdcfe3e206019a4c0cf922e0052c")


def _asking(*parts: dict[str, Any]) -> dict[str, Any]:
    return {**REQUEST, "messages": [{"role": "user", "content": list(parts)}]}


def test_content_parts_are_keyed_and_an_inline_image_by_its_digest() -> None:
    text = {"type": "text", "text": "What is this?"}
    image = {"type": "image_url", "image_url": {"url": PIXEL}}
    # The same parts share a key; another image, another detail or another order do not
    assert cache_key(SPEC, _asking(text, image)) == cache_key(SPEC, _asking(dict(text), dict(image)))
    others = [
        _asking(text, {"type": "image_url", "image_url": {"url": PIXEL[:-4] + "AAA="}}),
        _asking(text, {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}}),
        _asking(image, text),
        _asking(text),
    ]
    assert len({cache_key(SPEC, other) for other in [_asking(text, image), *others]}) == 5
    # An image by URL is keyed by its URL; one inline by the digest of its data, not the data itself
    url = _asking(text, {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}})
    assert cache_key(SPEC, url) != cache_key(SPEC, _asking(text, image))
    digest = "sha256:" + hashlib.sha256(PIXEL.encode()).hexdigest()
    assert cache_key(SPEC, _asking(text, {"type": "image_url", "image_url": {"url": digest}})) == cache_key(
        SPEC, _asking(text, image)
    )


@pytest.mark.parametrize(
    "other",
    [
        SPEC.model_copy(update={"name": "cached-2"}),
        SPEC.model_copy(update={"model": "gpt-y"}),
        SPEC.model_copy(update={"provider": "anthropic"}),
    ],
)
def test_another_model_or_upstream_never_shares_an_answer(other: ModelSpec) -> None:
    assert cache_key(other, REQUEST) != cache_key(SPEC, REQUEST)


def test_a_stored_answer_is_found_until_its_ttl(fake_redis: fakeredis.FakeRedis) -> None:
    key = cache_key(SPEC, REQUEST)
    assert lookup(fake_redis, key) is None
    store(fake_redis, key, CachedAnswer(["Hel", "lo"], {"prompt_tokens": 3, "completion_tokens": 2}), 60)
    assert lookup(fake_redis, key) == CachedAnswer(["Hel", "lo"], {"prompt_tokens": 3, "completion_tokens": 2})
    assert 59_000 < fake_redis.pttl(key) <= 60_000


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"tokens": ["a"]}', b'{"tokens": "a", "usage": {"x": "y"}}'])
def test_a_value_that_is_not_a_cached_answer_is_a_miss(fake_redis: fakeredis.FakeRedis, value: bytes) -> None:
    fake_redis.set("llm:cache:{cached}:x", value)
    assert lookup(fake_redis, "llm:cache:{cached}:x") is None


# The caching processor: it stores, once a generation is done, the tokens its readers saw.


def _generation(client: fakeredis.FakeRedis, events: list[tuple[str, dict[str, Any]]], *, gid: str = "gen_a") -> None:
    client.hset(keys.gen_meta(gid), mapping={"request": orjson.dumps(REQUEST), "model": "cached"})
    for n, (kind, data) in enumerate(events, 1):
        client.xadd(keys.gen_out(gid), encode_out(Event(id=f"{n}-0", type=kind, data=data)), id=f"{n}-0")


def _finish(client: fakeredis.FakeRedis, done: dict[str, Any], *, model: str = "cached", gid: str = "gen_a") -> None:
    processor = CachingProcessor(client, {"cached": SPEC, "plain": SPEC.model_copy(update={"cache_ttl_s": None})})
    gen = GenerationState(generation_id=gid, model=model)
    processor.finish(gen, Event(id="99-0", type="done", data=done))


def _tokens(*words: str) -> list[tuple[str, dict[str, Any]]]:
    return [("token", {"content": word}) for word in words]


def test_an_answer_done_with_stop_is_stored_with_its_usage(fake_redis: fakeredis.FakeRedis) -> None:
    _generation(fake_redis, _tokens("Hello", ", ", "world"))
    _finish(fake_redis, {"finish_reason": "stop", "usage": {"prompt_tokens": 4, "completion_tokens": 3, "x": "y"}})
    assert lookup(fake_redis, cache_key(SPEC, REQUEST)) == CachedAnswer(
        ["Hello", ", ", "world"], {"prompt_tokens": 4, "completion_tokens": 3}
    )


def test_only_the_tokens_after_the_last_restart_are_stored(fake_redis: fakeredis.FakeRedis) -> None:
    _generation(fake_redis, [*_tokens("lost ", "words"), ("restart", {"reason": "worker_lost"}), *_tokens("kept")])
    _finish(fake_redis, {"finish_reason": "stop", "usage": {}})
    assert lookup(fake_redis, cache_key(SPEC, REQUEST)) == CachedAnswer(["kept"], {})


def test_a_long_answer_is_stored_whole(fake_redis: fakeredis.FakeRedis) -> None:
    words = [f"w{i} " for i in range(1200)]  # more than one page of the read
    _generation(fake_redis, _tokens(*words))
    _finish(fake_redis, {"finish_reason": "stop", "usage": {}})
    found = lookup(fake_redis, cache_key(SPEC, REQUEST))
    assert found is not None and found.tokens == words


@pytest.mark.parametrize(
    ("done", "model"),
    [
        ({"finish_reason": "length"}, "cached"),  # cut short
        ({"finish_reason": "tool_calls"}, "cached"),
        ({"finish_reason": "stop", "cached": True}, "cached"),  # came from the cache
        ({"finish_reason": "stop"}, "plain"),  # the model does not cache
        ({"finish_reason": "stop"}, "unknown"),
    ],
)
def test_what_is_not_stored(fake_redis: fakeredis.FakeRedis, done: dict[str, Any], model: str) -> None:
    _generation(fake_redis, _tokens("Hello"))
    _finish(fake_redis, done, model=model)
    assert not fake_redis.keys("llm:cache:*")


def test_an_error_or_a_cancel_is_not_stored(fake_redis: fakeredis.FakeRedis) -> None:
    _generation(fake_redis, _tokens("Hello"))
    processor = CachingProcessor(fake_redis, {"cached": SPEC})
    gen = GenerationState(generation_id="gen_a", model="cached")
    processor.finish(gen, Event(id="9-0", type="error", data={"code": "provider_error", "message": "x"}))
    processor.finish(gen, Event(id="9-0", type="cancelled", data={}))
    assert not fake_redis.keys("llm:cache:*")


def test_a_generation_whose_record_expired_is_not_stored(fake_redis: fakeredis.FakeRedis) -> None:
    _generation(fake_redis, _tokens("Hello"))
    fake_redis.delete(keys.gen_meta("gen_a"))
    _finish(fake_redis, {"finish_reason": "stop"})
    assert not fake_redis.keys("llm:cache:*")

"""The response cache: an exact-match cache of whole answers, for the models whose registry entry opts in.

A model with ``cache_ttl_s`` in the registry caches every answer that completes with ``stop``: the consumer's
``CachingProcessor`` stores its tokens once the generation is done. A later request for the same model with the
same prompt or messages and the same sampling parameters (``cache_key``) is answered from the cache by the
worker, through the same pipeline (the same events, the same resume), without calling the provider; its
``done`` event says ``"cached": true``. Every field that can change the answer is in the key (content parts,
images by their digest, sampling, ``response_format``); ``user`` never is. Keys are
``llm:cache:{model}:<sha256>``, expiring after the TTL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from bridge import keys
from bridge.content import digest_images
from bridge.generation import ANSWER_FIELDS
from bridge.models import ModelSpec

# The request fields that make two answers the same; anything else (metadata, session, the end user) does not.
_KEYED_FIELDS = ("prompt", "messages", "max_tokens", "temperature", "stop", "options", "tools", "tool_choice")


def cache_key(spec: ModelSpec, request: dict[str, Any]) -> str:
    """The key of the answer to ``request`` (as stored: JSON); its inline images count by their digest."""
    identity = {
        "model": spec.name,
        "provider": spec.provider,
        "upstream": spec.upstream_model,
        **{name: request.get(name) for name in _KEYED_FIELDS},
        **{name: request[name] for name in ANSWER_FIELDS if request.get(name) is not None},
    }
    if isinstance(identity["messages"], list):
        identity["messages"] = [_with_image_digests(message) for message in identity["messages"]]
    digest = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return keys.response_cache(spec.name, digest)


def _with_image_digests(message: Any) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    return {**message, "content": digest_images(message["content"])}


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    tokens: list[str]
    usage: dict[str, int]


def lookup(client: redis.Redis, key: str) -> CachedAnswer | None:
    raw: Any = client.get(key)
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
        return CachedAnswer([str(t) for t in value["tokens"]], {k: int(v) for k, v in value["usage"].items()})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None  # not ours, or from another version: a miss


def store(client: redis.Redis, key: str, answer: CachedAnswer, ttl_s: float) -> None:
    value = orjson.dumps({"tokens": answer.tokens, "usage": answer.usage})
    client.set(key, value, px=int(ttl_s * 1000))

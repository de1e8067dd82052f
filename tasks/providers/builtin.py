"""The built-in models: ``echo`` and ``synthetic``. They need no network."""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.models import SYNTHETIC_DEFAULT_MAX_TOKENS, EchoOptions, SyntheticOptions
from bridge.producer import Chunk, Finish, Scheduled
from tasks.providers.base import Provider

# A word with its following whitespace; leading whitespace of the text is a token of its own.
_WORDS = re.compile(r"^\s+|\S+\s*")

_VOCABULARY = (
    "the",
    "stream",
    "carries",
    "every",
    "token",
    "in",
    "order",
    "to",
    "each",
    "reader",
    "that",
    "watches",
    "the",
    "answer",
    "and",
    "a",
    "reader",
    "that",
    "comes",
    "back",
    "later",
    "resumes",
    "where",
    "it",
    "left",
    "off",
    "without",
    "a",
    "gap",
    "or",
    "a",
    "duplicate",
    "while",
    "processors",
    "look",
    "at",
    "what",
    "passes",
    "through",
    "redis",
    "keeps",
    "the",
    "log",
)


def split_words(text: str) -> list[str]:
    """Tokens of ``echo``: concatenated, they give back ``text`` exactly."""
    return _WORDS.findall(text)


def _paced(stop: threading.Event, start: float, index: int, interval_s: float) -> bool:
    """Wait until token ``index`` is due; False when stopped meanwhile."""
    if interval_s <= 0:
        return not stop.is_set()
    delay = start + index * interval_s - time.monotonic()
    if delay > 0:
        return not stop.wait(delay)
    return not stop.is_set()


def _streamed(scheduled: Scheduled, stop: threading.Event) -> Iterator[Chunk]:
    """A schedule as a stream: each chunk when it is due (for a caller with no write loop)."""
    start = time.monotonic()
    for due_s, chunk in scheduled.chunks:
        delay = start + due_s - time.monotonic()
        if (delay > 0 and stop.wait(delay)) or stop.is_set():
            return
        yield chunk


class EchoProvider(Provider):
    """Streams the prompt (or the last user message) back, word by word."""

    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]:
        return _streamed(self.schedule(request), stop)

    def schedule(self, request: GenerationRequest) -> Scheduled:
        options = EchoOptions.model_validate(request.options or {})
        words = split_words(request.input_text())
        limit = request.max_tokens if request.max_tokens is not None else len(words)
        interval_s = options.delay_ms / 1000

        def chunks() -> Iterator[tuple[float, Chunk]]:
            for index, word in enumerate(words[:limit]):
                yield (index + 1) * interval_s, word
            reason = "length" if limit < len(words) else "stop"
            usage = {"prompt_tokens": len(words), "completion_tokens": min(limit, len(words))}
            yield min(limit, len(words)) * interval_s, Finish(reason, usage)

        return Scheduled(chunks())


class SyntheticProvider(Provider):
    """Deterministic pseudo-text for load tests: ``max_tokens`` tokens at ``options.tokens_per_second``.

    The ``fail_*`` and ``stall_*`` options inject the faults of a real model: failures before the first
    token (retried), failures midway, silence.
    """

    def __init__(self) -> None:
        # Tries so far per request object (the task retries with the same one); bounded.
        self._tries: OrderedDict[int, int] = OrderedDict()

    def _try_number(self, request: GenerationRequest) -> int:
        tries = self._tries.pop(id(request), 0) + 1
        self._tries[id(request)] = tries
        while len(self._tries) > 1000:
            self._tries.popitem(last=False)
        return tries

    def schedule(self, request: GenerationRequest) -> Scheduled | None:
        """The answer when no fault is asked for (a fault goes through ``stream``)."""
        options = SyntheticOptions.model_validate(request.options or {})
        if options.fail_before_first or options.fail_after_tokens is not None or options.stall_after_tokens is not None:
            return None
        words = self._words(request, options)
        interval_s = 1.0 / options.tokens_per_second

        def chunks() -> Iterator[tuple[float, Chunk]]:
            for index, word in enumerate(words):
                yield index * interval_s, word
            yield max(0, len(words) - 1) * interval_s, self._finish(request, len(words))

        return Scheduled(chunks())

    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]:
        options = SyntheticOptions.model_validate(request.options or {})
        if options.fail_before_first and self._try_number(request) <= options.fail_before_first:
            raise ProviderError("synthetic failure before the first token", code="provider_unavailable", retryable=True)
        words = self._words(request, options)
        interval_s = 1.0 / options.tokens_per_second
        start = time.monotonic()
        for index, word in enumerate(words):
            if index == options.fail_after_tokens:
                raise ProviderError(f"synthetic failure after {index} tokens", code="provider_error")
            if index == options.stall_after_tokens:
                stop.wait()
                return
            if not _paced(stop, start, index, interval_s):
                return
            yield word
        yield self._finish(request, len(words))

    @staticmethod
    def _words(request: GenerationRequest, options: SyntheticOptions) -> list[str]:
        count = request.max_tokens if request.max_tokens is not None else SYNTHETIC_DEFAULT_MAX_TOKENS
        seed = options.seed if options.seed is not None else request.seed  # the request's own seed, as a model's
        if seed is None:
            seed = int.from_bytes(hashlib.sha256(request.input_text().encode()).digest()[:8], "big")
        rng = random.Random(seed)
        return [rng.choice(_VOCABULARY) + " " for _ in range(count)]

    @staticmethod
    def _finish(request: GenerationRequest, count: int) -> Finish:
        return Finish("length", {"prompt_tokens": len(split_words(request.input_text())), "completion_tokens": count})

"""The processor chain: what runs on every event between ``:raw`` and ``:out``.

A processor can transform an event (return a changed one), drop it (return None) or only observe it
(return it unchanged). Terminal events cannot be dropped. ``start`` runs when a consumer takes a
generation (again after a takeover), ``finish`` once its terminal event is committed.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from bridge import budgets, keys
from bridge import cache as response_cache
from bridge.budgets import Budget
from bridge.cache import CachedAnswer
from bridge.errors import ProcessingError
from bridge.events import STATUS_AFTER, Event, EventType
from bridge.models import ModelSpec, registry_for
from workers import metrics

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class GenerationState:
    """What the processors see of a generation. Restored from ``:meta`` after a takeover."""

    generation_id: str
    model: str = ""
    session_id: str = ""
    # The generation's place in its session ('' for one stored before sessions kept it).
    session_n: str = ""
    api_key: str = ""
    created_at: float = 0.0
    seq: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    resumed: bool = False
    finished: bool = False
    # The API key's token budget, as written at creation (per minute, per day; 0: none).
    budget: tuple[int, int] = (0, 0)
    # The end user (the request's ``user`` as recorded) and its own token budget of the key ('' and 0: none).
    user: str = ""
    user_budget: tuple[int, int] = (0, 0)
    # Fields for ``:meta``, written in the same transaction as the batch that produced them.
    meta_updates: dict[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, generation_id: str, meta: dict[str, str]) -> GenerationState:
        first = meta.get("first_token_at")
        return cls(
            generation_id=generation_id,
            model=meta.get("model", ""),
            session_id=meta.get("session_id", ""),
            session_n=meta.get("session_n", ""),
            api_key=meta.get("api_key", ""),
            created_at=float(meta.get("created_at", 0) or 0),
            seq=int(meta.get("seq", 0)),
            completion_tokens=int(meta.get("completion_tokens", 0)),
            first_token_at=float(first) if first else None,
            resumed=int(meta.get("seq", 0)) > 0,
            budget=_budget(meta.get("budget", "")),
            user=meta.get("user", ""),
            user_budget=_budget(meta.get("user_budget", "")),
        )


def _budget(text: str) -> tuple[int, int]:
    per_minute, _, per_day = text.partition(",")
    return (int(per_minute), int(per_day)) if per_minute.isdigit() and per_day.isdigit() else (0, 0)


class Processor:
    """Base of every processor; each hook's default does nothing.

    A processor that raises is logged and skipped for that event, unless it is ``critical`` (a moderation
    step that must not be bypassed): then the entry is retried, and after ``DEAD_LETTER_AFTER`` deliveries
    it goes to the dead-letter stream and the generation ends with an error (or, with ``DEAD_LETTER_HOLD_S``,
    waits that long for an operator to replay or drop it).
    """

    name = "processor"
    critical = False

    def start(self, gen: GenerationState) -> None:
        """Called when this consumer takes the generation."""

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        """Return the event to pass on (changed or not), or None to drop it."""
        return event

    def finish(self, gen: GenerationState, event: Event) -> None:
        """Called once the terminal event is committed."""

    def committed(self, tokens: list[tuple[GenerationState, int]]) -> list[tuple[str, str, str]]:
        """Called after each commit with the tokens it committed per generation (and with none at each heartbeat);
        returns generations to end now, as (generation id, error code, message)."""
        return []

    def close(self) -> None:
        """Called once when the consumer stops: write what the processor still holds."""


class PersistenceProcessor(Processor):
    """Keeps ``:meta`` current: usage, status, finish reason, error.

    The text so far is not kept here: the commit appends each token's content to ``:text`` (a field rewritten
    whole at every commit would cost the answer's length per token).
    """

    name = "persistence"

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        updates = gen.meta_updates
        if event.type == EventType.TOKEN:
            gen.completion_tokens += 1
            if gen.first_token_at is None:
                gen.first_token_at = float(event.data.get("ts", time.time()))
                updates["first_token_at"] = repr(gen.first_token_at)
                updates["status"] = "running"
            updates["completion_tokens"] = gen.completion_tokens
        elif event.type == EventType.RESTART:
            gen.completion_tokens = 0
            updates["completion_tokens"] = 0
        elif event.terminal:
            updates["status"] = STATUS_AFTER[event.type].value
            updates["finished_at"] = repr(time.time())
            if event.type == EventType.DONE.value:
                updates["finish_reason"] = event.data.get("finish_reason", "stop")
                usage = event.data.get("usage") or {}
                updates["prompt_tokens"] = int(usage.get("prompt_tokens", 0))
                updates["completion_tokens"] = int(usage.get("completion_tokens", gen.completion_tokens))
            elif event.type == EventType.ERROR.value:
                updates["finish_reason"] = "error"
                updates["error"] = orjson.dumps({"code": event.data.get("code"), "message": event.data.get("message")})
            else:
                updates["finish_reason"] = "cancelled"
        return event


class AnalyticsProcessor(Processor):
    """Counts per model: generations by status, tokens, time to first token and tokens per second.

    Nothing per token, and no round trip per generation: what ends is added up in memory and written with one
    pipeline at most every ``flush_s`` (after a commit, or at the consumer's heartbeat), so ``llm:stats`` is at
    most that much behind.
    """

    name = "analytics"

    def __init__(self, client: redis.Redis, *, ttft_samples: int = 1000, flush_s: float = 1.0) -> None:
        self.client = client
        self.ttft_samples = ttft_samples
        self.flush_s = flush_s
        # Per model: counters to add, and the newest samples first (as LPUSH leaves them).
        self._counts: dict[str, dict[str, int]] = {}
        self._samples: dict[str, tuple[list[float], list[float]]] = {}
        self._written_at = 0.0

    def finish(self, gen: GenerationState, event: Event) -> None:
        model = gen.model or "unknown"
        status = STATUS_AFTER[event.type].value
        metrics.FINISHED.labels(model, status).inc()
        counts = self._counts.setdefault(model, {})
        for field_name, amount in (("generations", 1), (f"status:{status}", 1), ("tokens", gen.completion_tokens)):
            counts[field_name] = counts.get(field_name, 0) + amount
        if gen.first_token_at is not None and gen.created_at:
            metrics.TTFT.labels(model).observe(max(0.0, gen.first_token_at - gen.created_at))
            ttft_ms = max(0.0, (gen.first_token_at - gen.created_at) * 1000)
            duration_s = max(1e-6, time.time() - gen.first_token_at)
            ttfts, rates = self._samples.setdefault(model, ([], []))
            ttfts.append(round(ttft_ms, 3))
            rates.append(round(gen.completion_tokens / duration_s, 3))

    def committed(self, tokens: list[tuple[GenerationState, int]]) -> list[tuple[str, str, str]]:
        if self._counts and time.monotonic() - self._written_at >= self.flush_s:
            self.flush()
        return []

    def flush(self) -> None:
        """Write what ended since the last write, in one round trip."""
        counts, self._counts = self._counts, {}
        samples, self._samples = self._samples, {}
        self._written_at = time.monotonic()
        pipe = self.client.pipeline(transaction=False)
        for model, fields in counts.items():
            key = keys.stats(model)
            for field_name, amount in fields.items():
                pipe.hincrby(key, field_name, amount)
        for model, (ttfts, rates) in samples.items():
            key = keys.stats(model)
            for suffix, values in ((":ttft_ms", ttfts), (":tokens_per_s", rates)):
                pipe.lpush(key + suffix, *values[-self.ttft_samples :])
                pipe.ltrim(key + suffix, 0, self.ttft_samples - 1)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("Could not write the analytics of %s models: %s", len(counts), exc)

    def close(self) -> None:
        if self._counts or self._samples:
            self.flush()


class LoggingProcessor(Processor):
    """One summary line per generation."""

    name = "logging"

    def finish(self, gen: GenerationState, event: Event) -> None:
        now = time.time()
        ttft_ms = (gen.first_token_at - gen.created_at) * 1000 if gen.first_token_at and gen.created_at else None
        logger.info(
            "Generation %s %s: %s tokens.",
            gen.generation_id,
            event.type,
            gen.completion_tokens,
            extra={
                "generation_id": gen.generation_id,
                "session_id": gen.session_id,
                "model": gen.model,
                "tokens": gen.completion_tokens,
                "ttft_ms": round(ttft_ms, 3) if ttft_ms is not None else None,
                "duration_ms": round((now - gen.created_at) * 1000, 3) if gen.created_at else None,
                "finish_reason": event.data.get("finish_reason") or event.type,
            },
        )


class CachingProcessor(Processor):
    """Fills the response cache: an answer of a model that caches, done with ``stop``, is stored whole.

    Nothing per token: at the end it reads the generation's tokens back from ``:out`` (those since its last
    restart). An answer that came from the cache is not stored again.
    """

    name = "cache"

    def __init__(self, client: redis.Redis, models: dict[str, ModelSpec]) -> None:
        self.client = client
        self.models = models

    def finish(self, gen: GenerationState, event: Event) -> None:
        spec = self.models.get(gen.model)
        if spec is None or not spec.cache_ttl_s or event.type != EventType.DONE.value:
            return
        if event.data.get("finish_reason") != "stop" or event.data.get("cached"):
            return
        # The request has a key of its own (kept for the resume window); ``:meta`` held it before.
        raw_request: Any = self.client.get(keys.gen_request(gen.generation_id))
        if raw_request is None:
            raw_request = self.client.hget(keys.gen_meta(gen.generation_id), "request")
        if raw_request is None:
            return
        tokens: list[str] = []
        after = "-"
        while True:
            page: Any = self.client.xrange(keys.gen_out(gen.generation_id), after, "+", count=1000)
            for _, fields in page:
                kind = fields.get("event")
                if kind == EventType.TOKEN.value:
                    tokens.append(orjson.loads(fields["data"]).get("content", ""))
                elif kind == EventType.RESTART.value:
                    tokens = []
            if len(page) < 1000:
                break
            after = "(" + page[-1][0]
        usage = {k: v for k, v in (event.data.get("usage") or {}).items() if isinstance(v, int)}
        key = response_cache.cache_key(spec, orjson.loads(raw_request))
        response_cache.store(self.client, key, CachedAnswer(tokens, usage), spec.cache_ttl_s)


@dataclass(frozen=True, slots=True)
class _Spender:
    """Whose budget a generation's tokens count against: ``name`` keeps its windows (``bridge.budgets``)."""

    name: str
    budget: Budget
    what: str


def _spenders(gen: GenerationState) -> list[_Spender]:
    """The API key, when it has a budget, and the end user, when the key's users have one."""
    found = []
    if gen.api_key and any(gen.budget):
        found.append(_Spender(gen.api_key, Budget(*gen.budget), "API key"))
    if gen.api_key and gen.user and any(gen.user_budget):
        found.append(_Spender(keys.user_budget_name(gen.api_key, gen.user), Budget(*gen.user_budget), "end user"))
    return found


class TokenBudgetProcessor(Processor):
    """The rate-limit processor: adds what each key's generations really produced to its budget windows, and to
    those of their end user.

    Counts per committed batch (nothing per token), writes at most every ``budgets.FLUSH_S``, and ends the
    running generations of a key (or of an end user) that went past its budget with ``rate_limited``.
    """

    name = "token-budget"

    def __init__(self, client: redis.Redis, *, flush_s: float = budgets.FLUSH_S) -> None:
        self.client = client
        self.flush_s = flush_s
        self._pending: dict[str, int] = {}
        self._spenders: dict[str, _Spender] = {}
        self._running: dict[str, set[str]] = {}
        self._written_at = 0.0

    def start(self, gen: GenerationState) -> None:
        for spender in _spenders(gen):
            self._running.setdefault(spender.name, set()).add(gen.generation_id)
            self._spenders[spender.name] = spender

    def finish(self, gen: GenerationState, event: Event) -> None:
        for spender in _spenders(gen):
            running = self._running.get(spender.name)
            if running is not None:
                running.discard(gen.generation_id)
                if not running:
                    del self._running[spender.name]
                self._written_at = 0.0  # a generation that ends has its last tokens counted at once

    def committed(self, tokens: list[tuple[GenerationState, int]]) -> list[tuple[str, str, str]]:
        for gen, count in tokens:
            for spender in _spenders(gen) if count else ():
                self._pending[spender.name] = self._pending.get(spender.name, 0) + count
                self._spenders.setdefault(spender.name, spender)
        now = time.monotonic()
        if not self._pending or now - self._written_at < self.flush_s:
            return []
        self._written_at = now
        pending, self._pending = self._pending, {}
        pipe = self.client.pipeline(transaction=False)
        for name, count in pending.items():
            budgets.add(pipe, name, count)
            if self._spenders[name].what == "API key":  # not per end user: one series per user is too many
                metrics.KEY_TOKENS.labels(name).inc(count)
        results = pipe.execute()
        to_end: dict[str, tuple[str, str, str]] = {}
        for index, name in enumerate(pending):
            minute, day = results[4 * index], results[4 * index + 2]
            spender = self._spenders[name]
            limit = spender.budget
            over = (limit.per_day and day > limit.per_day and "day") or (
                limit.per_minute and minute > limit.per_minute and "minute"
            )
            if not over:
                continue
            message = f"The {spender.what}'s token budget for this {over} is spent."
            for gid in sorted(self._running.get(name, ())):
                to_end.setdefault(gid, (gid, "rate_limited", message))  # once, past both of its budgets too
        return list(to_end.values())

    def close(self) -> None:
        self._written_at = 0.0
        self.committed([])


class Chain:
    """Runs processors in order; a processor that raises is logged and skipped (critical ones: see Processor)."""

    def __init__(self, processors: list[Processor]) -> None:
        self.processors = processors
        # The processors that look at events (those that only start or finish are not called per event),
        # each with its histogram child, looked up once rather than for every event.
        self._per_event = [
            (p, metrics.PROCESSOR_SECONDS.labels(p.name))
            for p in processors
            if type(p).process is not Processor.process
        ]
        self._per_commit = [p for p in processors if type(p).committed is not Processor.committed]

    def start(self, gen: GenerationState) -> None:
        for processor in self.processors:
            try:
                processor.start(gen)
            except Exception:
                logger.exception("Processor %s failed to start generation %s.", processor.name, gen.generation_id)

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        current = event
        for processor, seconds in self._per_event:
            started = time.perf_counter()
            try:
                result = processor.process(gen, current)
            except Exception as exc:
                metrics.PROCESSOR_ERRORS.labels(processor.name).inc()
                if processor.critical:
                    raise ProcessingError(f"{processor.name}: {exc!r}") from exc
                logger.exception(
                    "Processor %s failed on entry %s of generation %s; skipped.",
                    processor.name,
                    current.id,
                    gen.generation_id,
                    extra={"generation_id": gen.generation_id},
                )
                continue
            finally:
                seconds.observe(time.perf_counter() - started)
            if result is None:
                if current.terminal:
                    logger.warning("Processor %s cannot drop a terminal event; kept.", processor.name)
                    continue
                return None
            current = result
        return current

    def finish(self, gen: GenerationState, event: Event) -> None:
        for processor in self.processors:
            try:
                processor.finish(gen, event)
            except Exception:
                logger.exception("Processor %s failed to finish generation %s.", processor.name, gen.generation_id)

    def close(self) -> None:
        for processor in self.processors:
            try:
                processor.close()
            except Exception:
                logger.exception("Processor %s failed to close.", processor.name)

    def committed(self, tokens: list[tuple[GenerationState, int]]) -> list[tuple[str, str, str]]:
        """What the processors that look at commits ask to end (see ``Processor.committed``)."""
        to_end: list[tuple[str, str, str]] = []
        for processor in self._per_commit:
            try:
                to_end += processor.committed(tokens)
            except Exception:
                logger.exception("Processor %s failed after a commit.", processor.name)
        return to_end


def default_processors(client: redis.Redis, extra: str = "", *, models_file: str | None = None) -> list[Processor]:
    """The shipped chain, with the ``PROCESSORS`` setting's extra processors before persistence.

    ``extra`` is a comma-separated list of ``module:name``; each names a callable that takes the Redis
    client and returns a Processor (a Processor subclass whose ``__init__`` takes the client will do).
    """
    # Transformers (moderation, redaction) go before persistence so that :meta holds what readers see.
    added = [_load_processor(path.strip(), client) for path in extra.split(",") if path.strip()]
    return [
        AnalyticsProcessor(client),
        LoggingProcessor(),
        *added,
        PersistenceProcessor(),
        TokenBudgetProcessor(client),
        CachingProcessor(client, registry_for(models_file)),
    ]


def _load_processor(path: str, client: redis.Redis) -> Processor:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"PROCESSORS entry {path!r} must look like 'package.module:name'")
    factory = getattr(importlib.import_module(module_name), attribute)
    processor = factory(client)
    if not isinstance(processor, Processor):
        raise TypeError(f"{path} returned {type(processor).__name__}, not a Processor")
    return processor

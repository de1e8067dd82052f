"""The commit of processed batches: one round trip for everything a read brought (one per node on a cluster).

Each generation's batch is one script, atomic on its own: the batch's client events into ``:out`` (same ids),
``XACK :raw``, ``:meta`` and ``:text`` (``scripts.COMMIT``). On a single Redis the session copy and the
end-of-generation expiry are part of it. On a cluster the session is another slot: the copy goes first, fenced
by ``seq`` so that a batch committed again after a crash copies nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from bridge import keys, scripts
from bridge.cluster import MOVING
from bridge.connections import UNAVAILABLE
from bridge.events import Event, EventType
from bridge.memory import is_out_of_memory
from bridge.settings import Settings
from workers import metrics
from workers.owned import OwnedGeneration

logger = logging.getLogger(__name__)

_TOKEN = EventType.TOKEN.value
# What counts against a token budget: answer text and reasoning (tool-call deltas are pieces of JSON).
_PRODUCED = frozenset({EventType.TOKEN.value, EventType.REASONING.value})


@dataclass(slots=True)
class Batch:
    """What one read brought for one generation, processed and waiting for its commit."""

    owned: OwnedGeneration
    # The commit its processing started from (``OwnedGeneration.last_id``): COMMIT refuses it unless current.
    base: str = ""
    outs: list[tuple[str, Event]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    terminal: Event | None = None
    # An entry that could not be processed: (entry id, fields, error, malformed).
    failure: tuple[str, dict[str, str], Exception, bool] | None = None

    def produced(self) -> int:
        """The tokens this batch counts against a token budget."""
        return sum(1 for _, out in self.outs if out.type in _PRODUCED)


class Committer:
    """Writes processed batches to ``:out`` and ``:meta`` and acknowledges their ``:raw`` entries."""

    def __init__(self, client: redis.Redis, settings: Settings, *, group: str, cluster: bool) -> None:
        self.client = client
        self.settings = settings
        self.group = group
        self.cluster = cluster

    def commit(self, batches: list[Batch]) -> tuple[list[Batch], Exception | None, list[Batch]]:
        """Commit ``batches`` (each with entries to acknowledge).

        Returns those that ended, the first failure, and those refused as processed from a state that is not
        the last commit's (nothing of them was written or acknowledged).
        """
        if self.cluster:
            self.copy_to_sessions(batches)
        results = scripts.run_batch(self.client, [self._commit_call(batch) for batch in batches])
        ended = []
        refused = []
        failure: Exception | None = None
        for batch, result in zip(batches, results, strict=True):
            batch.owned.gen.meta_updates = {}
            if scripts.decode_commit(result) is scripts.Commit.REFUSED:
                logger.warning(
                    "Generation %s: commit refused (another consumer committed since, or an entry before the"
                    " batch is pending); reloaded before the next read.",
                    batch.owned.generation_id,
                    extra={"generation_id": batch.owned.generation_id},
                )
                metrics.REFUSED_COMMITS.inc()
                refused.append(batch)
                continue
            try:
                self.check(batch.owned.generation_id, [result])
            except Exception as exc:
                failure = failure or exc
                continue
            metrics.ENTRIES.inc(len(batch.acked))
            if batch.terminal is not None:
                ended.append(batch)
        if ended:
            self._end(ended)
        return ended, failure, refused

    def copy_to_sessions(self, batches: list[Batch]) -> None:
        """Append the batches' client events to their session streams (a cluster: another slot than the commit)."""
        calls = []
        for batch in batches:
            gen = batch.owned.gen
            if not gen.session_id or not batch.outs:
                continue
            args: list[Any] = [gen.generation_id, self.settings.redis_stream_max_length]
            args.append(self.settings.redis_stream_retention_ms * 2)
            for entry_id, out in batch.outs:
                fields = _session_fields(gen.generation_id, entry_id, out)
                args += [out.data["seq"], fields["event"], fields["data"], entry_id]
            session_keys = [keys.session_out(gen.session_id), keys.session_copied(gen.session_id)]
            calls.append(scripts.Call(scripts.SESSION_APPEND, session_keys, args))
        for result in scripts.run_batch(self.client, calls):
            if isinstance(result, Exception):
                raise result

    def check(self, generation_id: str, results: list[Any]) -> None:
        """Raise what means "not committed" (resync and retry); log what an earlier owner already wrote."""
        for result in results:
            # Redis (or the slot's node) cannot answer now, or the slot moved: not committed; resync and retry.
            if isinstance(result, Exception) and isinstance(result, (*UNAVAILABLE, *MOVING)):
                raise result
            # Refused at maxmemory: nothing of it was written. Retried like an outage; an end gets through.
            if isinstance(result, redis.ResponseError) and is_out_of_memory(result):
                raise result
            if isinstance(result, redis.ResponseError):
                if "equal or smaller" in str(result):
                    # Already written by an earlier owner of this generation: the id makes it a no-op.
                    logger.warning("Generation %s: entry already in :out; skipped.", generation_id)
                    continue
                logger.error("Generation %s: commit step failed: %s", generation_id, result)

    def _commit_call(self, batch: Batch) -> scripts.Call:
        gen = batch.owned.gen
        retention_ms = self.settings.redis_stream_retention_ms if batch.terminal is not None else 0
        args: list[Any] = [self.group, self.settings.redis_stream_max_length, retention_ms, gen.generation_id]
        args.append(len(batch.outs))
        args.append(len(batch.acked))
        args.append(batch.base)
        for entry_id, out in batch.outs:
            content = out.data.get("content", "") if out.type == _TOKEN else ""
            args.extend((entry_id, out.type, orjson.dumps(out.data), content if isinstance(content, str) else ""))
        args.extend(batch.acked)
        gen.meta_updates["seq"] = gen.seq
        for item in gen.meta_updates.items():
            args.extend(item)
        if not batch.owned.commit_keys:
            batch.owned.commit_keys = _commit_keys(gen.generation_id, gen.session_id if not self.cluster else "")
        commit_keys = batch.owned.commit_keys
        # The streams a reader is told about (with every other commit of the flush, on a single Redis).
        hints = (commit_keys[0], commit_keys[6]) if len(commit_keys) > 6 else (commit_keys[0],)
        return scripts.Call(scripts.COMMIT, commit_keys, args, hints if batch.outs else ())

    def _end(self, ended: list[Batch]) -> None:
        """After the terminal event's commit, in one round trip for every generation that ended: its work entry is
        done, the key's running slot released, the session expired (cluster)."""
        retention_ms = self.settings.redis_stream_retention_ms
        pipe = self.client.pipeline(transaction=False)
        for batch in ended:
            owned = batch.owned
            pipe.xack(owned.work_stream, self.group, owned.work_id)
            pipe.xdel(owned.work_stream, owned.work_id)
            gen = owned.gen
            if gen.api_key:
                pipe.zrem(keys.key_running(gen.api_key), gen.generation_id)
            if gen.session_id and self.cluster:
                pipe.pexpire(keys.session_out(gen.session_id), retention_ms)
                pipe.pexpire(keys.session_index(gen.session_id), retention_ms * 2)
        if len(pipe):
            self.check("(end of generations)", pipe.execute(raise_on_error=False))


def _commit_keys(generation_id: str, session_id: str) -> list[str]:
    """The keys of ``scripts.COMMIT``: the generation's, and its session's when the copy is part of the commit."""
    commit_keys = [
        keys.gen_out(generation_id),
        keys.gen_raw(generation_id),
        keys.gen_meta(generation_id),
        keys.gen_text(generation_id),
        keys.gen_cancel(generation_id),
        keys.gen_lease(generation_id),
    ]
    if session_id:
        commit_keys += [keys.session_out(session_id), keys.session_index(session_id)]
    return commit_keys


def _session_fields(generation_id: str, entry_id: str, out: Event) -> dict[str, Any]:
    """A client event as the session stream holds it: with its generation and its ``:out`` id."""
    return {
        "event": out.type,
        "data": orjson.dumps({**out.data, "generation_id": generation_id}),
        "entry_id": entry_id,
    }

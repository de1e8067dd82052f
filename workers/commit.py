"""The commit of processed batches: one round trip for everything a read brought (one per node on a cluster).

Each generation's batch is one script, atomic on its own: the batch's client events into ``:out`` (same ids),
``XACK :raw``, ``:meta`` and ``:text`` (``scripts.COMMIT``). On a single Redis the session copy, the
end-of-generation expiry and the release of what the generation held (its work entry, its running slots) are part
of it. On a cluster the session is another slot: the copy goes first, fenced
by ``seq`` so that a batch committed again after a crash copies nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from bridge import ends, keys, scripts
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
        results = scripts.run_batch(self.client, [self._commit_call(batch) for batch in batches])
        ended = []
        refused = []
        committed = []
        # Ended and still to release: on a single Redis the commit released them, unless its script failed midway.
        unreleased = []
        failure: Exception | None = None
        for batch, result in zip(batches, results, strict=True):
            batch.owned.gen.meta_updates = {}
            if scripts.decode_commit(result) is scripts.Status.REFUSED:
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
            committed.append(batch)
            if batch.terminal is not None:
                ended.append(batch)
                if self.cluster or isinstance(result, Exception):
                    unreleased.append(batch)
        if self.cluster:
            # After the commit: a commit refused (processed from a stale state) adds nothing to the session.
            self.copy_to_sessions(committed)
        if unreleased:
            self._end(unreleased)
        return ended, failure, refused

    def copy_to_sessions(self, batches: list[Batch]) -> None:
        """Add the committed batches' client events to their session streams (a cluster: another slot than the
        commit, so after it). A generation this consumer has not added to its session since it took it (over, or
        again after a failure) first gets what was committed before its batch and not added yet: a consumer that
        died between a commit and its copy leaves nothing out."""
        missed = self._missed([(b.owned, b.base) for b in batches if not b.owned.session_synced])
        calls = []
        for batch in batches:
            owned = batch.owned
            owned.session_synced = True
            events = missed.get(owned.generation_id, []) + [(i, out.type, out.data) for i, out in batch.outs]
            call = self._session_call(owned, events)
            if call is not None:
                calls.append(call)
        for result in scripts.run_batch(self.client, calls):
            if isinstance(result, Exception):
                raise result

    def sync_sessions(self, finished: list[OwnedGeneration]) -> None:
        """Add to their sessions what finished generations committed and did not add yet (a cluster)."""
        pipe = self.client.pipeline(transaction=False)
        for owned in finished:
            pipe.hget(keys.gen_meta(owned.generation_id), "last_id")
        last_ids = pipe.execute() if finished else []
        missed = self._missed([(owned, str(last or "")) for owned, last in zip(finished, last_ids, strict=True)])
        calls = [self._session_call(owned, missed.get(owned.generation_id, [])) for owned in finished]
        for result in scripts.run_batch(self.client, [call for call in calls if call is not None]):
            if isinstance(result, Exception):
                raise result

    def _missed(self, owned: list[tuple[OwnedGeneration, str]]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
        """Per generation, its committed events after the last one its session has, up to the id given with it (two
        round trips, once per generation a consumer takes)."""
        todo = [(o, until) for o, until in owned if o.gen.session_id and o.gen.resumed and until]
        if not todo:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for o, _ in todo:
            pipe.hget(keys.session_copied(o.gen.session_id), o.generation_id)
        copied = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        ranges = []
        for (o, until), last in zip(todo, copied, strict=True):
            if last is not None and "-" not in str(last):
                continue  # a seq: added before its commit (before sessions pointed at events): nothing missed
            start = f"({last}" if last else "-"
            if last != until:
                pipe.xrange(keys.gen_out(o.generation_id), min=start, max=until)
                ranges.append(o.generation_id)
        missed: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for gid, entries in zip(ranges, pipe.execute() if ranges else [], strict=True):
            missed[gid] = [(i, f.get("event", ""), orjson.loads(f.get("data", "{}"))) for i, f in entries]
        return missed

    def _session_call(
        self, owned: OwnedGeneration, events: list[tuple[str, str, dict[str, Any]]]
    ) -> scripts.Call | None:
        gen = owned.gen
        if not gen.session_id or not events:
            return None
        args: list[Any] = [gen.generation_id, self.settings.redis_stream_max_length]
        args += [self.settings.redis_stream_retention_ms * 2, gen.session_n]
        for entry_id, event, data in events:
            # A whole copy only for a generation stored before sessions pointed at events.
            whole = orjson.dumps({**data, "generation_id": gen.generation_id}) if not gen.session_n else ""
            args += [event, whole, entry_id]
        session_keys = [keys.session_out(gen.session_id), keys.session_copied(gen.session_id)]
        return scripts.Call(scripts.SESSION_APPEND, session_keys, args)

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
        settings = self.settings
        retention_ms = settings.redis_stream_retention_ms if batch.terminal is not None else 0
        args: list[Any] = [self.group, settings.redis_stream_max_length, retention_ms, settings.resume_window_ms]
        args += [gen.generation_id, gen.session_n, len(batch.outs), len(batch.acked), batch.base]
        # The terminal event as readers get it, kept with the record: '<event> <id> <data>' in ``:end``, or only
        # its name and id in ``:meta`` when the record's fields give back the rest (``bridge.ends``).
        gen.meta_updates["seq"] = gen.seq
        if batch.terminal is not None and batch.outs:
            entry_id, terminal = batch.outs[-1]
            line = f"{terminal.type} {entry_id} {orjson.dumps(terminal.data).decode()}"
            short = ends.short_form(line, gen.meta_updates)
            if short is not None:
                gen.meta_updates["end"] = short
            args.append("" if short is not None else line)
        else:
            args.append("")
        for entry_id, out in batch.outs:
            content = out.data.get("content", "") if out.type == _TOKEN else ""
            args.extend((entry_id, out.type, orjson.dumps(out.data), content if isinstance(content, str) else ""))
        args.extend(batch.acked)
        for item in gen.meta_updates.items():
            args.extend(item)
        if not batch.owned.commit_keys:
            batch.owned.commit_keys = _commit_keys(gen.generation_id, gen.session_id if not self.cluster else "")
        commit_keys = batch.owned.commit_keys
        # The streams a reader is told about (with every other commit of the flush, on a single Redis).
        hints = (commit_keys[0], commit_keys[8]) if len(commit_keys) > 8 else (commit_keys[0],)
        end_keys = _end_keys(batch.owned) if batch.terminal is not None and not self.cluster else []
        args[10:10] = [len(end_keys), batch.owned.work_id if end_keys else ""]
        return scripts.Call(scripts.COMMIT, commit_keys + end_keys, args, hints if batch.outs else ())

    def _end(self, ended: list[Batch]) -> None:
        """After the terminal event's commit, in one round trip for every generation that ended: its work entry is
        done, the running slots of its key and of its end user released, the session expired. On a cluster (other
        slots than the commit's), or when the commit's script failed; on a single Redis the commit does it."""
        retention_ms = self.settings.redis_stream_retention_ms
        pipe = self.client.pipeline(transaction=False)
        for batch in ended:
            owned = batch.owned
            work_stream, *running = _end_keys(owned)
            pipe.xack(work_stream, self.group, owned.work_id)
            pipe.xdel(work_stream, owned.work_id)
            for key in running:
                pipe.zrem(key, owned.generation_id)
            gen = owned.gen
            if gen.session_id and self.cluster:
                pipe.pexpire(keys.session_out(gen.session_id), self.settings.resume_window_ms)
                pipe.pexpire(keys.session_generations(gen.session_id), retention_ms * 2)
        if len(pipe):
            self.check("(end of generations)", pipe.execute(raise_on_error=False))


def _end_keys(owned: OwnedGeneration) -> list[str]:
    """What the end of a generation releases: its work stream, and the running sets of its key and of its end user
    (``scripts.COMMIT``'s ``n_end`` keys on a single Redis; ``Committer._end`` on a cluster)."""
    gen = owned.gen
    end_keys = [owned.work_stream]
    if gen.api_key:
        end_keys.append(keys.key_running(gen.api_key))
        if gen.user:
            end_keys.append(keys.user_running(gen.api_key, gen.user))
    return end_keys


def _commit_keys(generation_id: str, session_id: str) -> list[str]:
    """The keys of ``scripts.COMMIT``: the generation's, and its session's when the copy is part of the commit."""
    commit_keys = [
        keys.gen_out(generation_id),
        keys.gen_raw(generation_id),
        keys.gen_meta(generation_id),
        keys.gen_text(generation_id),
        keys.gen_cancel(generation_id),
        keys.gen_lease(generation_id),
        keys.gen_request(generation_id),
        keys.gen_end(generation_id),
    ]
    if session_id:
        commit_keys += [keys.session_out(session_id), keys.session_generations(session_id)]
    return commit_keys

"""The consumer worker: takes generations from ``llm:work``, runs the processor chain, commits to ``:out``.

One read (``bridge.cluster.NotifiedReader``: ``XREADGROUP`` of the keys the writers' hints name) covers the
work stream (its shards) and the raw stream of every generation this worker owns. What a read brings is
processed, then committed in one round trip: each generation's batch one atomic script (``XADD :out`` with the
raw entry's id, ``XACK :raw``, the ``:meta`` fields the batch changed). A work entry stays pending while its
generation runs; re-reading our own pending entries keeps them fresh, so only a dead worker's go idle and are taken
over with ``XAUTOCLAIM`` by another, which continues from the first unacknowledged raw entry.

The worker also supervises the generations it owns: an attempt whose lease ran out (its Celery worker
died) is enqueued again or, after ``GENERATION_MAX_ATTEMPTS``, ended with ``worker_lost``. An entry that
cannot be processed is retried, then moved to ``llm:dead`` and its generation ended with ``poison_entry``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from types import FrameType
from typing import Any

import orjson
import redis

from bridge import dead_letters, keys, scripts
from bridge.cluster import MOVING, NotifiedReader, node_client, refresh_if_moved
from bridge.connections import UNAVAILABLE, is_cluster
from bridge.dead_letters import Decision
from bridge.errors import ProcessingError
from bridge.events import Event, EventType, decode_raw
from bridge.memory import is_out_of_memory
from bridge.settings import Settings
from bridge.streams import ensure_group, work_backlog
from workers import metrics
from workers.alerts import Alerter
from workers.celery_events import CeleryEvents
from workers.processors import Chain, GenerationState, Processor

logger = logging.getLogger(__name__)
# Longest wait between two tries while Redis cannot answer: a Sentinel failover or a restart is over in
# seconds, and a consumer that waits longer than that stalls every reader (a try costs one connection attempt).
_UNAVAILABLE_BACKOFF_MAX_S = 1.0

FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})
_PAGE = 100

Enqueue = Callable[[str], None]


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ConsumerWorker:
    """Processes generations until ``stop()``; safe to run several at once on one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        processors: list[Processor],
        *,
        name: str | None = None,
        enqueue: Enqueue | None = None,
        events: CeleryEvents | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.chain = Chain(processors)
        self.group = settings.redis_consumer_group
        self.name = name or settings.consumer_name or default_consumer_name()
        self.enqueue = enqueue
        # What Flower shows of this consumer (CONSUMER_CELERY_EVENTS): one call per state change of a generation.
        self.events = events
        self.owned: dict[str, GenerationState] = {}
        # Processed batches waiting for the commit of the current read.
        self._batches: list[Batch] = []
        self._stopping = threading.Event()
        self._next_housekeeping = 0.0
        self._group_ready = False
        self._resync = False
        self.alerter = Alerter(client, settings, self.name)
        self.work_streams = keys.work_streams(settings.work_shard_count)
        self.cluster = is_cluster(client)
        # Reads woken by the writers' hints: a read costs what it brings back, not the generations owned.
        self.reader = NotifiedReader(client, sweep_s=settings.consumer_block_ms / 1000)

    # -- lifecycle ---------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Finish the current batch, then leave ``run``."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            logger.info("Consumer %s got signal %s; finishing the current batch.", self.name, signum)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self) -> None:
        logger.info("Consumer %s started (group %s).", self.name, self.group)
        if self.events is not None:
            self.events.start()
        backoff_s = 0.1
        while not self._stopping.is_set():
            try:
                self.run_once()
                backoff_s = 0.1
            except Exception as exc:
                # Whatever was in flight may or may not have been committed: re-read our pending entries.
                self._resync = True
                if isinstance(exc, UNAVAILABLE):
                    logger.warning("Redis unavailable (%s); retrying in %.1fs.", exc, backoff_s)
                else:
                    logger.exception("Consumer %s loop failed; retrying in %.1fs.", self.name, backoff_s)
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, _UNAVAILABLE_BACKOFF_MAX_S if isinstance(exc, UNAVAILABLE) else 5.0)
        self._leave()
        if self.events is not None:
            self.events.close()
        self.reader.close()
        logger.info("Consumer %s stopped.", self.name)

    def _leave(self) -> None:
        """Deregister, and mark our work entries idle so that another consumer takes them over at once."""
        try:
            for stream in self.work_streams:
                work_ids: list[Any] = [s.work_id for s in self.owned.values() if s.work_stream == stream]
                if work_ids:
                    self.client.xclaim(
                        stream,
                        self.group,
                        self.name,
                        min_idle_time=0,
                        message_ids=work_ids,
                        idle=self.settings.consumer_claim_idle_ms,
                        justid=True,
                    )
            if self.owned:
                logger.info("Consumer %s handed back %s generations.", self.name, len(self.owned))
            if self.events is not None:
                for gid in self.owned:
                    self.events.handed_on(gid, f"consumer {self.name} stopped; another one continues")
            self.client.zrem(keys.CONSUMERS_ZSET, self.name)
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            logger.warning("Consumer %s could not deregister.", self.name)

    # -- one turn of the loop ----------------------------------------------------------------------

    def run_once(self, *, block_ms: int | None = None) -> int:
        """Housekeeping when due, then one blocking read and its processing. Returns entries processed."""
        if not self._group_ready:
            for stream in self.work_streams:
                ensure_group(self.client, stream, self.group)
            self._group_ready = True
        if self._resync:
            self._reload_owned()
        if time.monotonic() >= self._next_housekeeping:
            self._housekeeping_unless_full()
            self._next_housekeeping = time.monotonic() + self.settings.consumer_heartbeat_ms / 1000
        block = block_ms if block_ms is not None else self.settings.consumer_block_ms
        # Never block past the next heartbeat: a consumer that waits must still look alive.
        block = max(1, min(block, int((self._next_housekeeping - time.monotonic()) * 1000) + 1))
        streams, block = self._streams_to_read(block)
        try:
            reply = self._read(streams, block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._recover_missing_groups()
            return 0
        processed = 0
        for stream, entries in reply or []:
            if stream in self.work_streams:
                for work_id, fields in entries:
                    self.adopt(fields.get("generation_id", ""), work_id, taken_over=False, work_stream=stream)
                continue
            gid = keys.generation_id_from_key(stream)
            state = self.owned.get(gid)
            if state is None:
                continue
            if streams[stream] == "0" and not entries:
                state.pending_retry = False  # nothing of ours is pending any more: back to new entries
                continue
            processed += self.process(gid, entries)
        self.flush()
        return processed

    def _read(self, streams: dict[str, str], block_ms: int) -> Any:
        group = (self.group, self.name)
        return self.reader.read(streams, count=self.settings.consumer_batch, block_ms=block_ms, group=group)

    def _streams_to_read(self, block_ms: int) -> tuple[dict[str, str], int]:
        """New entries for most generations; our own pending ones (id 0) for those that must retry."""
        streams = dict.fromkeys(self.work_streams, ">")
        now = time.monotonic()
        next_retry = None
        for gid, state in self.owned.items():
            if not state.pending_retry:
                streams[keys.gen_raw(gid)] = ">"
            elif state.retry_at <= now:
                streams[keys.gen_raw(gid)] = "0"
            else:
                next_retry = state.retry_at if next_retry is None else min(next_retry, state.retry_at)
        if next_retry is not None:
            block_ms = max(1, min(block_ms, int((next_retry - now) * 1000) + 1))
        return streams, block_ms

    def _housekeeping_unless_full(self) -> None:
        """Housekeeping, skipped for this round when Redis at maxmemory refuses one of its writes: commits
        must go on, since the end of a generation gets through at maxmemory (bridge/memory.py)."""
        try:
            self.housekeeping()
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            logger.warning("Consumer %s: Redis is at maxmemory; housekeeping skipped this round.", self.name)

    def housekeeping(self) -> None:
        """Heartbeat, keep our work entries fresh (and notice lost ones), take over a dead worker's, supervise."""
        now_ms = int(time.time() * 1000)
        self.client.zadd(keys.CONSUMERS_ZSET, {self.name: now_ms})
        self._refresh_owned()
        self._take_over_idle()
        self._apply_decisions()
        self._after_commit([])  # counts a processor still holds (a token budget) are written when due
        self._supervise()
        self._measure()
        self.alerter.tick()

    def _measure(self) -> None:
        """Gauges of the work stream (every consumer reports the same figures; aggregate with max)."""
        metrics.OWNED.set(len(self.owned))
        pending, lag, age_s = work_backlog(self.client, self.group, self.settings.work_shard_count)
        metrics.PENDING.set(pending)
        if lag is not None:
            metrics.LAG.set(lag)
        metrics.OLDEST_PENDING.set(age_s)

    def _refresh_owned(self) -> None:
        # Reading our own pending entries resets their idle time and lists exactly what we still own.
        still_ours: set[str] = set()
        for stream in self.work_streams:
            last = "0-0"
            while True:
                reply = self._read_own(stream, last)
                entries = reply[0][1] if reply else []
                for work_id, fields in entries:
                    last = work_id
                    if not fields:
                        self._release_work(stream, work_id)  # deleted while pending
                        continue
                    gid = fields.get("generation_id", "")
                    still_ours.add(gid)
                    if gid and gid not in self.owned:
                        # Ours from an earlier life under the same name: continue it.
                        self.adopt(gid, work_id, taken_over=True, work_stream=stream)
                if len(entries) < _PAGE:
                    break
        for gid in list(self.owned):
            if gid not in still_ours:
                logger.warning("Generation %s was taken over by another consumer; letting it go.", gid)
                del self.owned[gid]
                if self.events is not None:
                    self.events.handed_on(gid, "taken over by another consumer")

    def _read_own(self, stream: str, after: str) -> Any:
        """A page of our own pending entries of a work shard (straight from its node)."""
        try:
            return node_client(self.client, stream).xreadgroup(self.group, self.name, {stream: after}, count=_PAGE)
        except MOVING as exc:
            # The shard's slot moved: learn where, and read through the cluster client, which follows it.
            refresh_if_moved(self.client, [exc])
            return self.client.xreadgroup(self.group, self.name, {stream: after}, count=_PAGE)

    def _take_over_idle(self) -> None:
        for stream in self.work_streams:
            start = "0-0"
            for _ in range(10):
                reply: Any = self.client.xautoclaim(
                    stream,
                    self.group,
                    self.name,
                    min_idle_time=self.settings.consumer_claim_idle_ms,
                    start_id=start,
                    count=_PAGE,
                )
                start, entries = reply[0], reply[1]
                for work_id, fields in entries:
                    if fields is None:
                        continue
                    gid = fields.get("generation_id", "")
                    logger.info("Taking over generation %s from an idle consumer.", gid, extra={"generation_id": gid})
                    metrics.TAKEOVERS.inc()
                    self.adopt(gid, work_id, taken_over=True, work_stream=stream)
                if start == "0-0":
                    break

    def _supervise(self) -> None:
        """Restart or end generations whose attempt stopped renewing its lease, or that never started."""
        gids = [gid for gid, state in self.owned.items() if not state.finished]
        if not gids:
            return
        settings = self.settings
        args = [int(time.time() * 1000), settings.generation_max_attempts, int(settings.queue_timeout_s * 1000)]
        calls = [scripts.Call(scripts.SUPERVISE, [keys.gen_meta(gid), keys.gen_lease(gid)], args) for gid in gids]
        actions: dict[str, int] = {}
        for gid, result in zip(gids, scripts.run_batch(self.client, calls), strict=True):
            if isinstance(result, MOVING):
                continue  # its slot is moving: supervised at the next heartbeat, on its new node
            if isinstance(result, Exception):
                raise result
            actions[gid] = result
        for gid in gids:
            action = actions.get(gid, 0)
            if action == 1 and self.enqueue is not None:
                logger.warning(
                    "Generation %s lost its worker; enqueuing a new attempt.", gid, extra={"generation_id": gid}
                )
                self._requeue(gid)
            elif action in (1, 2):
                self.fail(gid, "worker_lost", "The worker running this generation stopped, and it was not retried.")
            elif action == 3:
                self.fail(
                    gid, "queue_timeout", f"No worker started this generation within {settings.queue_timeout_s:g} s."
                )
            elif action == 4:
                self.fail(gid, "producer_timeout", "The external producer sent nothing for too long.")

    def _requeue(self, generation_id: str) -> None:
        assert self.enqueue is not None
        try:
            self.enqueue(generation_id)
            metrics.REQUEUES.inc()
        except Exception as exc:
            # Not enqueued: take the mark back so that the next round tries again.
            logger.warning("Generation %s could not be enqueued: %s", generation_id, exc)
            attempt = self.client.hget(keys.gen_meta(generation_id), "requeued_attempt")
            if attempt is not None:
                scripts.run(self.client, scripts.UNMARK_REQUEUE, [keys.gen_meta(generation_id)], [attempt])

    def fail(self, generation_id: str, code: str, message: str) -> None:
        """End a generation with an error, whatever attempt holds it (the attempt is fenced off)."""
        logger.warning(
            "Generation %s ends with %s: %s", generation_id, code, message, extra={"generation_id": generation_id}
        )
        scripts.run(
            self.client,
            scripts.FAIL,
            [keys.gen_meta(generation_id), keys.gen_lease(generation_id), keys.gen_raw(generation_id)],
            [
                EventType.ERROR.value,
                orjson.dumps({"code": code, "message": message}),
                self.settings.redis_stream_max_length,
            ],
        )

    # -- generations -------------------------------------------------------------------------------

    def adopt(self, generation_id: str, work_id: str, *, taken_over: bool, work_stream: str = keys.WORK_STREAM) -> None:
        """Own a generation: load its state and, after a takeover, process what the last owner left."""
        if generation_id in self.owned:
            return
        meta: dict[str, str] = self.client.hgetall(keys.gen_meta(generation_id)) if generation_id else {}  # type: ignore[assignment]
        if not meta or meta.get("status") in FINISHED_STATUSES:
            # Unknown, expired or already finished: nothing left to do for it.
            self._release_work(work_stream, work_id)
            return
        state = GenerationState.from_meta(generation_id, work_id, meta, work_stream=work_stream)
        state.resumed = state.resumed or taken_over
        self.owned[generation_id] = state
        if self.events is not None:
            self.events.received(state, taken_over=taken_over)
        self.chain.start(state)
        if taken_over:
            self._process_left_over(generation_id)

    def _reload_owned(self) -> None:
        """After an error mid-commit: state from ``:meta`` (what was committed) and our pending entries again."""
        self._batches = []  # processed from state that may not have been committed: processed again
        for gid, old in list(self.owned.items()):
            meta: dict[str, str] = self.client.hgetall(keys.gen_meta(gid))  # type: ignore[assignment]
            if not meta:
                self._forget(gid)
                continue
            state = GenerationState.from_meta(gid, old.work_id, meta, work_stream=old.work_stream)
            state.pending_retry = True
            state.scratch = old.scratch
            self.owned[gid] = state
        self._resync = False

    def _process_left_over(self, generation_id: str) -> None:
        raw = keys.gen_raw(generation_id)
        start = "0-0"
        while generation_id in self.owned:
            try:
                reply: Any = self.client.xautoclaim(
                    raw, self.group, self.name, min_idle_time=0, start_id=start, count=_PAGE
                )
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._forget(generation_id)
                return
            start, entries = reply[0], [(i, f) for i, f in reply[1] if f is not None]
            if entries:
                self.process(generation_id, entries)
                self.flush()
            if start == "0-0" or self.owned.get(generation_id, None) is None or self.owned[generation_id].pending_retry:
                return

    def process(self, generation_id: str, entries: Iterable[tuple[str, dict[str, str] | None]]) -> int:
        """Run the chain over a batch of raw entries of one generation; ``flush`` commits it.

        Stops at an entry that cannot be processed: what came before is committed, that entry and the rest
        stay pending and are read again (or the entry is dead-lettered).
        """
        state = self.owned[generation_id]
        if self.events is not None:
            self.events.started(generation_id)
        batch = Batch(state)
        for entry_id, fields in entries:
            if state.finished or not fields:
                batch.acked.append(entry_id)  # after the terminal entry, or trimmed: acknowledged and dropped
                continue
            try:
                event = decode_raw(entry_id, fields)
            except (KeyError, ValueError) as exc:
                batch.failure = (entry_id, fields, exc, True)
                break
            if state.poisoned:
                if not event.terminal:
                    batch.acked.append(entry_id)
                    continue
                # Whatever the producer ended with, a generation that lost an entry ends with the error.
                event = Event(id=event.id, type=EventType.ERROR.value, data=dict(state.scratch["poison"]))
            try:
                out = self.chain.process(state, event)
            except ProcessingError as exc:
                batch.failure = (entry_id, fields, exc, False)
                break
            batch.acked.append(entry_id)
            if entry_id == state.held_entry:
                # The held entry went through (a replay, or the last try when the hold ran out): carry on.
                state.held_entry = None
                state.meta_updates.update(held_entry="", held_until="")
            if out is not None:
                out.data["seq"] = state.seq
                state.seq += 1
                batch.outs.append((entry_id, out))
            if event.terminal:
                state.finished = True
                batch.terminal = out or event
        if batch.acked or batch.failure is not None:
            self._batches.append(batch)
        return len(batch.acked)

    def flush(self) -> None:
        """Commit every batch processed since the last flush: one round trip (one per node on a cluster).

        Each generation's batch is one script, atomic on its own: the batch's client events into ``:out``
        (same ids), ``XACK :raw``, ``:meta`` and ``:text`` (``scripts.COMMIT``). On a single Redis the session
        copy and the end-of-generation expiry are part of it. On a cluster the session is another slot: the
        copy goes first, fenced by ``seq`` so that a batch committed again after a crash copies nothing twice.
        """
        batches, self._batches = self._batches, []
        committed = [batch for batch in batches if batch.acked]
        failure: Exception | None = None
        if committed:
            if self.cluster:
                self._copy_to_sessions(committed)
            results = scripts.run_batch(self.client, [self._commit_call(batch) for batch in committed])
            ended = []
            for batch, result in zip(committed, results, strict=True):
                batch.state.meta_updates = {}
                try:
                    self._check(batch.state.generation_id, [result])
                except Exception as exc:
                    failure = failure or exc
                    continue
                metrics.ENTRIES.inc(len(batch.acked))
                if batch.terminal is not None:
                    ended.append(batch)
            if ended:
                self._end(ended)
            self._after_commit(committed)
        for batch in batches:
            if batch.failure is not None:
                self._handle_failure(batch.state, *batch.failure)
        if failure is not None:
            raise failure

    def _commit_call(self, batch: Batch) -> scripts.Call:
        state = batch.state
        retention_ms = self.settings.redis_stream_retention_ms if batch.terminal is not None else 0
        args: list[Any] = [self.group, self.settings.redis_stream_max_length, retention_ms, state.generation_id]
        args.append(len(batch.outs))
        args.append(len(batch.acked))
        for entry_id, out in batch.outs:
            content = out.data.get("content", "") if out.type == _TOKEN else ""
            args.extend((entry_id, out.type, orjson.dumps(out.data), content if isinstance(content, str) else ""))
        args.extend(batch.acked)
        state.meta_updates["seq"] = state.seq
        for item in state.meta_updates.items():
            args.extend(item)
        session = state.session_id if not self.cluster else ""
        return scripts.Call(scripts.COMMIT, _commit_keys(state.generation_id, session), args)

    def _after_commit(self, committed: list[Batch]) -> None:
        """Tell the processors what was committed; end the generations they ask to (a spent token budget)."""
        tokens = [(b.state, sum(1 for _, out in b.outs if out.type in _PRODUCED)) for b in committed]
        for generation_id, code, message in self.chain.committed(tokens):
            state = self.owned.get(generation_id)
            if state is not None and not state.finished and not state.poisoned:
                self.fail(generation_id, code, message)

    def _end(self, ended: list[Batch]) -> None:
        """After the terminal event's commit: release the key's running slot, expire the session (cluster)."""
        retention_ms = self.settings.redis_stream_retention_ms
        pipe = self.client.pipeline(transaction=False)
        for batch in ended:
            state = batch.state
            if state.api_key:
                pipe.zrem(keys.key_running(state.api_key), state.generation_id)
            if state.session_id and self.cluster:
                pipe.pexpire(keys.session_out(state.session_id), retention_ms)
                pipe.pexpire(keys.session_index(state.session_id), retention_ms * 2)
        if len(pipe):
            self._check("(end of generations)", pipe.execute(raise_on_error=False))
        for batch in ended:
            assert batch.terminal is not None
            self.chain.finish(batch.state, batch.terminal)
            if self.events is not None:
                self.events.ended(batch.state, batch.terminal)
            self._release_work(batch.state.work_stream, batch.state.work_id)
            self.owned.pop(batch.state.generation_id, None)

    def _copy_to_sessions(self, batches: list[Batch]) -> None:
        calls = []
        for batch in batches:
            state = batch.state
            if not state.session_id or not batch.outs:
                continue
            args: list[Any] = [state.generation_id, self.settings.redis_stream_max_length]
            args.append(self.settings.redis_stream_retention_ms * 2)
            for entry_id, out in batch.outs:
                fields = _session_fields(state.generation_id, entry_id, out)
                args += [out.data["seq"], fields["event"], fields["data"], entry_id]
            session_keys = [keys.session_out(state.session_id), keys.session_copied(state.session_id)]
            calls.append(scripts.Call(scripts.SESSION_APPEND, session_keys, args))
        for result in scripts.run_batch(self.client, calls):
            if isinstance(result, Exception):
                raise result

    def _handle_failure(
        self, state: GenerationState, entry_id: str, fields: dict[str, str], error: Exception, malformed: bool
    ) -> None:
        gid = state.generation_id
        deliveries = self._deliveries(gid, entry_id)
        state.failures += 1
        state.pending_retry = True
        if malformed:
            self._dead_letter(state, entry_id, fields, error, deliveries)
            return
        if deliveries >= self.settings.dead_letter_after:
            if state.held_entry != entry_id and self.settings.dead_letter_hold_s > 0:
                self._hold(state, entry_id, fields, error, deliveries)
            elif state.held_entry == entry_id and time.time() < state.held_until:
                # Still held (tried again after a takeover or a restart): wait on, recorded once already.
                state.retry_at = time.monotonic() + state.held_until - time.time()
            else:
                # Not held, or the hold ran out and its last try failed too.
                self._dead_letter(state, entry_id, fields, error, deliveries, record=state.held_entry != entry_id)
            return
        state.retry_at = time.monotonic() + min(0.05 * 2**state.failures, 2.0)
        logger.warning(
            "Generation %s: entry %s failed (delivery %s of %s): %s",
            gid,
            entry_id,
            deliveries,
            self.settings.dead_letter_after,
            error,
            extra={"generation_id": gid},
        )

    def _deliveries(self, generation_id: str, entry_id: str) -> int:
        pending: Any = self.client.xpending_range(
            keys.gen_raw(generation_id), self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    def _dead_letter(
        self,
        state: GenerationState,
        entry_id: str,
        fields: dict[str, str],
        error: Exception,
        deliveries: int,
        *,
        record: bool = True,
    ) -> None:
        """Give up on the entry: record it (unless its hold recorded it already) and end the generation."""
        gid = state.generation_id
        logger.error(
            "Generation %s: entry %s moved to %s after %s deliveries: %s",
            gid,
            entry_id,
            keys.DEAD_LETTERS,
            deliveries,
            error,
            extra={"generation_id": gid},
        )
        pipe = self.client.pipeline(transaction=False)
        if record:
            self._record(pipe, state, entry_id, fields, error, deliveries, held=False)
        pipe.xack(keys.gen_raw(gid), self.group, entry_id)
        pipe.execute()
        if record:
            metrics.DEAD_LETTERS.inc()
        self._give_up(state, entry_id, deliveries)

    def _give_up(self, state: GenerationState, entry_id: str, deliveries: int) -> None:
        """End the generation with ``poison_entry``; what it still holds pending is read again at once."""
        state.retry_at = time.monotonic()
        state.poisoned = True
        message = f"Entry {entry_id} could not be processed after {deliveries} deliveries."
        state.scratch["poison"] = {"code": "poison_entry", "message": message}
        self.fail(state.generation_id, "poison_entry", message)

    def _record(
        self,
        pipe: Any,
        state: GenerationState,
        entry_id: str,
        fields: dict[str, str],
        error: Exception,
        deliveries: int,
        *,
        held: bool,
    ) -> None:
        dead_letters.record(
            pipe,
            generation_id=state.generation_id,
            entry_id=entry_id,
            fields=fields,
            error=repr(error),
            deliveries=deliveries,
            consumer=self.name,
            held=held,
            max_length=self.settings.dead_letter_max_length,
        )

    def _hold(
        self, state: GenerationState, entry_id: str, fields: dict[str, str], error: Exception, deliveries: int
    ) -> None:
        """Record the entry as a held dead letter; the generation waits for a replay or a drop (or the hold's end)."""
        gid = state.generation_id
        hold_s = self.settings.dead_letter_hold_s
        state.held_entry, state.held_until = entry_id, time.time() + hold_s
        state.retry_at = time.monotonic() + hold_s
        pipe = self.client.pipeline(transaction=False)
        self._record(pipe, state, entry_id, fields, error, deliveries, held=True)
        pipe.hset(keys.gen_meta(gid), mapping={"held_entry": entry_id, "held_until": repr(state.held_until)})
        pipe.execute()
        metrics.DEAD_LETTERS.inc()
        logger.error(
            "Generation %s: entry %s failed %s deliveries and is held for %ss in %s: replay or drop it (%s).",
            gid,
            entry_id,
            deliveries,
            hold_s,
            keys.DEAD_LETTERS,
            error,
            extra={"generation_id": gid},
        )

    def _apply_decisions(self) -> None:
        """An operator's replay or drop of a held generation's dead letter (read at each heartbeat)."""
        held = [state for state in self.owned.values() if state.held_entry and not state.poisoned]
        if not held:
            return
        pipe = self.client.pipeline(transaction=False)
        for state in held:
            pipe.getdel(keys.gen_replay(state.generation_id))
        for state, decision in zip(held, pipe.execute(), strict=True):
            action, _, entry_id = str(decision or "").partition(":")
            if entry_id != state.held_entry:
                continue  # none, or about an entry this generation no longer waits on
            if action == Decision.REPLAY:
                logger.info("Generation %s: entry %s replayed.", state.generation_id, entry_id)
                state.held_entry, state.failures, state.retry_at = None, 0, time.monotonic()
                self.client.hset(keys.gen_meta(state.generation_id), mapping={"held_entry": "", "held_until": ""})
            elif action == Decision.DROP:
                logger.warning("Generation %s: dead entry %s dropped.", state.generation_id, entry_id)
                deliveries = self._deliveries(state.generation_id, entry_id)
                self.client.xack(keys.gen_raw(state.generation_id), self.group, entry_id)
                self._give_up(state, entry_id, deliveries)

    def _check(self, generation_id: str, results: list[Any]) -> None:
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

    def _release_work(self, stream: str, work_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(stream, self.group, work_id)
        pipe.xdel(stream, work_id)
        pipe.execute()

    def _forget(self, generation_id: str) -> None:
        state = self.owned.pop(generation_id, None)
        if state is not None:
            logger.warning("Generation %s has no raw stream any more; released.", generation_id)
            self._release_work(state.work_stream, state.work_id)
            if self.events is not None:
                self.events.vanished(generation_id)

    def _recover_missing_groups(self) -> None:
        for gid in list(self.owned):
            try:
                groups: Any = self.client.xinfo_groups(keys.gen_raw(gid))
            except redis.ResponseError:
                groups = []
            if not any(group.get("name") == self.group for group in groups):
                self._forget(gid)


@dataclass(slots=True)
class Batch:
    """What one read brought for one generation, processed and waiting for ``flush``."""

    state: GenerationState
    outs: list[tuple[str, Event]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    terminal: Event | None = None
    # An entry that could not be processed: (entry id, fields, error, malformed).
    failure: tuple[str, dict[str, str], Exception, bool] | None = None


_TOKEN = EventType.TOKEN.value
# What counts against a token budget: answer text and reasoning (tool-call deltas are pieces of JSON).
_PRODUCED = frozenset({EventType.TOKEN.value, EventType.REASONING.value})


@lru_cache(maxsize=16_384)
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

"""The consumer worker: takes generations from ``llm:work``, runs the processor chain, commits to ``:out``.

One read (``bridge.readers.StreamReader``: ``XREADGROUP`` of the keys the writers' hints name) covers the
work stream (its shards) and the raw stream of every generation this worker owns. What a read brings is
processed, then committed in one round trip (``workers.commit``). The other jobs have their own modules:
owning and taking over generations (``workers.ownership``), supervising their Celery attempts
(``workers.supervision``), and entries that cannot be processed (``workers.dead_letters``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from types import FrameType
from typing import Any

import redis

from bridge import keys
from bridge.connections import UNAVAILABLE, Outage, is_cluster
from bridge.errors import ProcessingError
from bridge.events import Event, EventType, decode_raw
from bridge.liveness import Heartbeat
from bridge.memory import is_out_of_memory
from bridge.readers import stream_reader
from bridge.settings import Settings
from bridge.streams import ensure_group, work_backlog
from workers import metrics, supervision, tracing
from workers.alerts import Alerter
from workers.celery_events import CeleryEvents
from workers.commit import Batch, Committer
from workers.dead_letters import DeadLetters
from workers.owned import OwnedGeneration
from workers.ownership import PAGE, Ownership
from workers.processors import Chain, Processor
from workers.supervision import Enqueue, Supervisor, WaitingTasks

logger = logging.getLogger(__name__)

# Entries per read (the XREADGROUP's COUNT), over the work stream and every owned generation's raw stream: what one
# read brings is processed and committed in one round trip.
CONSUMER_BATCH = 256

__all__ = ["Batch", "ConsumerWorker", "Enqueue", "default_consumer_name"]


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
        waiting_tasks: WaitingTasks | None = None,
        events: CeleryEvents | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.chain = Chain(processors)
        self.group = settings.redis_consumer_group
        self.name = name or settings.consumer_name or default_consumer_name()
        # What Flower shows of this consumer (CONSUMER_CELERY_EVENTS): one call per state change of a generation.
        self.events = events
        self.ownership = Ownership(client, settings, self.chain, name=self.name, group=self.group, events=events)
        self.supervisor = Supervisor(client, settings, enqueue, waiting_tasks)
        self.committer = Committer(client, settings, group=self.group, cluster=is_cluster(client))
        self.dead_letters = DeadLetters(client, settings, name=self.name, group=self.group, fail=self.fail)
        # Processed batches waiting for the commit of the current read.
        self._batches: list[Batch] = []
        self._stopping = threading.Event()
        self._next_housekeeping = 0.0
        # This consumer's proof of life, stamped by a thread of its own while ``run`` runs (``workers.liveness``),
        # and when it next looks for consumers whose proof stopped.
        self.heartbeat = Heartbeat(client, keys.CONSUMERS_ZSET, self.name, dead_after_ms=settings.dead_after_ms)
        self._next_death_check = 0.0
        self._group_ready = False
        self._resync = False
        # Generations whose commit was refused as stale (``scripts.COMMIT``'s fence): recovered before the next read.
        self._refused: set[str] = set()
        self.alerter = Alerter(client, settings, self.name)
        self.work_streams = self.ownership.work_streams
        # Reads woken by the writers' hints: a read costs what it brings back, not the generations owned.
        self.reader = stream_reader(client, sweep_s=settings.consumer_block_ms / 1000, hints=keys.RAW_HINTS)
        # CONSUMER_BATCH, or the deprecated setting while it is read (bridge/settings/deprecated.py).
        self.batch = settings.consumer_batch or CONSUMER_BATCH

    @property
    def owned(self) -> dict[str, OwnedGeneration]:
        """The generations this consumer owns, by id."""
        return self.ownership.owned

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
        self.heartbeat.start()
        if self.events is not None:
            self.events.start()
        outage = Outage(logger, "Redis unavailable", f"Consumer {self.name} reaches Redis again")
        backoff_s = 0.1  # after a failure that is not Redis being away: a flaw, retried more slowly
        while not self._stopping.is_set():
            try:
                self.run_once()
                outage.answered()
                backoff_s = 0.1
            except Exception as exc:
                # Whatever was in flight may or may not have been committed: re-read our pending entries.
                self._resync = True
                if isinstance(exc, UNAVAILABLE):
                    self._stopping.wait(outage.failed(exc))
                    continue
                logger.exception("Consumer %s loop failed; retrying in %.1fs.", self.name, backoff_s)
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
        self.heartbeat.stop()  # hand_back strikes this consumer off
        self.ownership.hand_back()
        self.chain.close()
        if self.events is not None:
            self.events.close()
        self.reader.close()
        logger.info("Consumer %s stopped.", self.name)

    # -- one turn of the loop ----------------------------------------------------------------------

    def run_once(self, *, block_ms: int | None = None) -> int:
        """Housekeeping when due, then one blocking read and its processing. Returns entries processed."""
        self._prepare()
        block = block_ms if block_ms is not None else self.settings.consumer_block_ms
        # Never block past the next heartbeat (a consumer that waits must still look alive), nor past the next look
        # for dead consumers (their readers wait for it).
        due = self._next_housekeeping
        if self.heartbeat.running:
            due = min(due, self._next_death_check)
        block = max(1, min(block, int((due - time.monotonic()) * 1000) + 1))
        streams, block = self._streams_to_read(block)
        try:
            reply = self._read(streams, block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ownership.recover_missing_groups()
            return 0
        processed = 0
        work = [
            (fields.get("generation_id", ""), work_id, stream)
            for stream, entries in reply or []
            if stream in self.work_streams
            for work_id, fields in entries
        ]
        if work:
            self.ownership.adopt_many(work, taken_over=False)  # the states of every new generation in one round trip
        for stream, entries in reply or []:
            if stream in self.work_streams:
                continue
            owned = self.owned.get(keys.generation_id_from_key(stream))
            if owned is None:
                continue
            if streams[stream] == "0" and not entries:
                owned.pending_retry = False  # nothing of ours is pending any more: back to new entries
                continue
            processed += self.process(owned.generation_id, entries)
        self.flush()
        return processed

    def _prepare(self) -> None:
        """Before a read: the work groups exist, our state is resynced after an error, housekeeping is done."""
        if not self._group_ready:
            for stream in self.work_streams:
                ensure_group(self.client, stream, self.group)
            self._group_ready = True
        if self._resync:
            self._batches = []  # processed from state that may not have been committed: processed again
            self._finish_reloaded(self.ownership.reload())
            self._resync = False
        if self._refused:
            self._recover_refused()
        if time.monotonic() >= self._next_housekeeping:
            self._housekeeping_unless_full()
            self._next_housekeeping = time.monotonic() + self.settings.consumer_heartbeat_ms / 1000
        if self.heartbeat.running and time.monotonic() >= self._next_death_check:
            self._take_over_the_dead()
            self._next_death_check = time.monotonic() + self.heartbeat.interval_s

    def _take_over_the_dead(self) -> None:
        """Take over the generations of consumers whose heartbeat stopped (one ``ZRANGEBYSCORE`` when none did)."""
        if not self.heartbeat.may_judge_others():
            return
        for owned in self.ownership.take_over_dead():
            self._process_left_over(owned.generation_id)

    def _housekeeping_unless_full(self) -> None:
        """Housekeeping, skipped for this round when Redis at maxmemory refuses one of its writes: commits
        must go on, since the end of a generation gets through at maxmemory (bridge/memory.py)."""
        try:
            self.housekeeping()
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            logger.warning("Consumer %s: Redis is at maxmemory; housekeeping skipped this round.", self.name)

    def _read(self, streams: dict[str, str], block_ms: int) -> Any:
        group = (self.group, self.name)
        return self.reader.read(streams, count=self.batch, block_ms=block_ms, group=group)

    def _streams_to_read(self, block_ms: int) -> tuple[dict[str, str], int]:
        """New entries for most generations; our own pending ones (id 0) for those that must retry."""
        streams = dict.fromkeys(self.work_streams, ">")
        now = time.monotonic()
        next_retry = None
        for gid, owned in self.owned.items():
            if not owned.pending_retry:
                streams[keys.gen_raw(gid)] = ">"
            elif owned.retry_at <= now:
                streams[keys.gen_raw(gid)] = "0"
            else:
                next_retry = owned.retry_at if next_retry is None else min(next_retry, owned.retry_at)
        if next_retry is not None:
            block_ms = max(1, min(block_ms, int((next_retry - now) * 1000) + 1))
        return streams, block_ms

    def housekeeping(self) -> None:
        """Heartbeat, keep our work entries fresh (and notice lost ones), take over a dead worker's, supervise."""
        now_ms = int(time.time() * 1000)
        self.client.zadd(keys.CONSUMERS_ZSET, {self.name: now_ms})
        for owned in self.ownership.refresh() + self.ownership.take_over_idle():
            self._process_left_over(owned.generation_id)
        self._claim_stranded()
        self.dead_letters.apply_decisions(list(self.owned.values()))
        self._after_commit([])  # counts a processor still holds (a token budget) are written when due
        running = [gid for gid, owned in self.owned.items() if not owned.gen.finished]
        lost_before_ms = self.supervisor.release_dead_workers(running) if self.heartbeat.may_judge_others() else 0
        self.supervisor.supervise(running, lost_before_ms=lost_before_ms)
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

    def fail(self, generation_id: str, code: str, message: str) -> None:
        """End a generation with an error, whatever attempt holds it (the attempt is fenced off)."""
        supervision.fail(self.client, self.settings, generation_id, code, message)

    # -- generations -------------------------------------------------------------------------------

    def adopt(self, generation_id: str, work_id: str, *, taken_over: bool, work_stream: str = keys.WORK_STREAM) -> None:
        """Own a generation: load its state and, after a takeover, process what the last owner left."""
        owned = self.ownership.adopt(generation_id, work_id, taken_over=taken_over, work_stream=work_stream)
        if owned is not None and taken_over:
            self._process_left_over(generation_id)

    def _recover_refused(self) -> None:
        """After commits refused as stale: let go of the generations taken over from us; reload the others from
        ``:meta`` and claim every entry of theirs still pending (ours, or a stale owner's), processed from there."""
        refused, self._refused = self._refused, set()
        try:
            for owned in self.ownership.refresh():
                self._process_left_over(owned.generation_id)
            self._finish_reloaded(self.ownership.reload(refused))
            for gid in refused:
                self._process_left_over(gid)
        except Exception:
            self._refused |= refused  # Redis failed us midway: recovered again at the next turn
            raise

    def _finish_reloaded(self, ended: list[OwnedGeneration]) -> None:
        """Generations whose end was committed but not followed through (the connection failed): their sessions get
        what they miss (a cluster), and their work entries are released."""
        if self.committer.cluster:
            self.committer.sync_sessions(ended)
        for owned in ended:
            self.ownership.release_work(owned.work_stream, owned.work_id)

    def _claim_stranded(self) -> None:
        """Claim what another consumer holds pending of a generation we took over: a consumer paused past the
        takeover may have been handed a new entry by the read it was in, and its commit of it was refused.
        Nothing new may come to make our next commit notice the entry, so each heartbeat looks."""
        taken = [gid for gid, o in self.owned.items() if o.gen.resumed and not o.pending_retry and not o.held_entry]
        if not taken:
            return
        pipe = self.client.pipeline(transaction=False)
        for gid in taken:
            pipe.xpending(keys.gen_raw(gid), self.group)
        for gid, summary in zip(taken, pipe.execute(raise_on_error=False), strict=True):
            holders = summary.get("consumers") or [] if isinstance(summary, dict) else []
            if any(holder["name"] != self.name for holder in holders):
                logger.warning("Generation %s: claiming entries another consumer left pending.", gid)
                self._process_left_over(gid)

    def _process_left_over(self, generation_id: str) -> None:
        raw = keys.gen_raw(generation_id)
        start = "0-0"
        while generation_id in self.owned and generation_id not in self._refused:
            try:
                reply: Any = self.client.xautoclaim(
                    raw, self.group, self.name, min_idle_time=0, start_id=start, count=PAGE
                )
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.ownership.forget(generation_id)
                return
            start, entries = reply[0], [(i, f) for i, f in reply[1] if f is not None]
            if entries:
                self.process(generation_id, entries)
                self.flush()
            owned = self.owned.get(generation_id)
            if start == "0-0" or owned is None or owned.pending_retry:
                return

    def process(self, generation_id: str, entries: Iterable[tuple[str, dict[str, str] | None]]) -> int:
        """Run the chain over a batch of raw entries of one generation; ``flush`` commits it.

        Stops at an entry that cannot be processed: what came before is committed, that entry and the rest
        stay pending and are read again (or the entry is dead-lettered).
        """
        owned = self.owned[generation_id]
        if self.events is not None:
            self.events.started(generation_id)
        batch = Batch(owned, base=owned.last_id)
        for entry_id, fields in entries:
            if owned.gen.finished or not fields:
                batch.acked.append(entry_id)  # after the terminal entry, or trimmed: acknowledged and dropped
                continue
            try:
                event = decode_raw(entry_id, fields)
            except (KeyError, ValueError) as exc:
                batch.failure = (entry_id, fields, exc, True)
                break
            if owned.poisoned and not event.terminal:
                batch.acked.append(entry_id)
                continue
            try:
                self._process_entry(batch, entry_id, event)
            except ProcessingError as exc:
                batch.failure = (entry_id, fields, exc, False)
                break
        if batch.acked:
            owned.last_id = batch.acked[-1]  # what the next batch is processed from, once this one is committed
        if batch.acked or batch.failure is not None:
            self._batches.append(batch)
        return len(batch.acked)

    def _process_entry(self, batch: Batch, entry_id: str, event: Event) -> None:
        """Run the chain over one entry and add what it gives to the batch (raises ``ProcessingError``)."""
        owned, gen = batch.owned, batch.owned.gen
        if owned.poisoned and owned.poison is not None:
            # Whatever the producer ended with, a generation that lost an entry ends with the error.
            event = Event(id=event.id, type=EventType.ERROR.value, data=dict(owned.poison))
        out = self.chain.process(gen, event)
        batch.acked.append(entry_id)
        if entry_id == owned.held_entry:
            # The held entry went through (a replay, or the last try when the hold ran out): carry on.
            owned.held_entry = None
            gen.meta_updates.update(held_entry="", held_until="")
        if out is not None:
            out.data["seq"] = gen.seq
            gen.seq += 1
            batch.outs.append((entry_id, out))
        if event.terminal:
            gen.finished = True
            batch.terminal = out or event

    def flush(self) -> None:
        """Commit every batch processed since the last flush (see ``workers.commit``), then end what ended."""
        batches, self._batches = self._batches, []
        committed = [batch for batch in batches if batch.acked]
        failure: Exception | None = None
        if committed:
            ended, failure, refused = self.committer.commit(committed)
            self._refused.update(batch.owned.generation_id for batch in refused)
            for batch in ended:
                assert batch.terminal is not None
                self.chain.finish(batch.owned.gen, batch.terminal)
                tracing.ended(batch.owned.generation_id, batch.terminal.type, batch.owned.gen.seq)
                if self.events is not None:
                    self.events.ended(batch.owned.gen, batch.terminal)
                self.ownership.release(batch.owned)
            self._after_commit([batch for batch in committed if all(batch is not r for r in refused)])
        for batch in batches:
            if batch.failure is not None:
                self.dead_letters.handle_failure(batch.owned, *batch.failure)
        if failure is not None:
            raise failure

    def _after_commit(self, committed: list[Batch]) -> None:
        """Tell the processors what was committed; end the generations they ask to (a spent token budget)."""
        tokens = [(batch.owned.gen, batch.produced()) for batch in committed]
        for generation_id, code, message in self.chain.committed(tokens):
            owned = self.owned.get(generation_id)
            if owned is not None and not owned.gen.finished and not owned.poisoned:
                self.fail(generation_id, code, message)

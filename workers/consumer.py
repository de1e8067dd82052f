"""The consumer worker: takes generations from ``llm:work``, runs the processor chain, commits to ``:out``.

One blocking ``XREADGROUP`` covers the work stream and the raw stream of every generation this worker
owns. Each batch of a generation is committed in one transaction: ``XADD :out`` with the raw entry's id,
``XACK :raw``, and the ``:meta`` fields the batch changed. A work entry stays pending while its generation
runs; re-reading our own pending entries keeps them fresh, so only a dead worker's go idle and are taken
over with ``XAUTOCLAIM`` by another, which continues from the first unacknowledged raw entry.
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

import orjson
import redis

from bridge import keys
from bridge.events import Event, decode_raw, encode_out
from bridge.settings import Settings
from bridge.streams import ensure_group
from workers.processors import Chain, GenerationState, Processor

logger = logging.getLogger(__name__)

FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})
_PAGE = 100


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
    ) -> None:
        self.client = client
        self.settings = settings
        self.chain = Chain(processors)
        self.group = settings.redis_consumer_group
        self.name = name or settings.consumer_name or default_consumer_name()
        self.owned: dict[str, GenerationState] = {}
        self._stopping = threading.Event()
        self._next_housekeeping = 0.0
        self._group_ready = False

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
        backoff_s = 0.1
        while not self._stopping.is_set():
            try:
                self.run_once()
                backoff_s = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("Redis unavailable (%s); retrying in %.1fs.", exc, backoff_s)
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
            except Exception:
                logger.exception("Consumer %s loop failed; retrying in %.1fs.", self.name, backoff_s)
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
        self._leave()
        logger.info("Consumer %s stopped.", self.name)

    def _leave(self) -> None:
        try:
            self.client.zrem(keys.CONSUMERS_ZSET, self.name)
        except redis.RedisError:
            logger.warning("Consumer %s could not deregister.", self.name)

    # -- one turn of the loop ----------------------------------------------------------------------

    def run_once(self, *, block_ms: int | None = None) -> int:
        """Housekeeping when due, then one blocking read and its processing. Returns entries processed."""
        if not self._group_ready:
            ensure_group(self.client, keys.WORK_STREAM, self.group)
            self._group_ready = True
        if time.monotonic() >= self._next_housekeeping:
            self.housekeeping()
            self._next_housekeeping = time.monotonic() + self.settings.consumer_heartbeat_ms / 1000
        streams = {keys.WORK_STREAM: ">"}
        streams.update({keys.gen_raw(gid): ">" for gid in self.owned})
        try:
            reply: Any = self.client.xreadgroup(
                self.group,
                self.name,
                streams,  # type: ignore[arg-type]
                count=self.settings.consumer_batch,
                block=block_ms if block_ms is not None else self.settings.consumer_block_ms,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._recover_missing_groups()
            return 0
        processed = 0
        for stream, entries in reply or []:
            if stream == keys.WORK_STREAM:
                for work_id, fields in entries:
                    self.adopt(fields.get("generation_id", ""), work_id, taken_over=False)
            else:
                gid = keys.generation_id_from_key(stream)
                if gid in self.owned:
                    processed += self.process(gid, entries)
        return processed

    def housekeeping(self) -> None:
        """Heartbeat, keep our work entries fresh (and notice lost ones), take over a dead worker's."""
        now_ms = int(time.time() * 1000)
        self.client.zadd(keys.CONSUMERS_ZSET, {self.name: now_ms})
        self._refresh_owned()
        self._take_over_idle()

    def _refresh_owned(self) -> None:
        # Reading our own pending entries resets their idle time and lists exactly what we still own.
        still_ours: set[str] = set()
        last = "0-0"
        while True:
            reply: Any = self.client.xreadgroup(self.group, self.name, {keys.WORK_STREAM: last}, count=_PAGE)
            entries = reply[0][1] if reply else []
            for work_id, fields in entries:
                last = work_id
                if not fields:
                    self._release_work(work_id)  # deleted while pending
                    continue
                gid = fields.get("generation_id", "")
                still_ours.add(gid)
                if gid and gid not in self.owned:
                    # Ours from an earlier life under the same name: continue it.
                    self.adopt(gid, work_id, taken_over=True)
            if len(entries) < _PAGE:
                break
        for gid in list(self.owned):
            if gid not in still_ours:
                logger.warning("Generation %s was taken over by another consumer; letting it go.", gid)
                del self.owned[gid]

    def _take_over_idle(self) -> None:
        start = "0-0"
        for _ in range(10):
            reply: Any = self.client.xautoclaim(
                keys.WORK_STREAM,
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
                self.adopt(gid, work_id, taken_over=True)
            if start == "0-0":
                break

    # -- generations -------------------------------------------------------------------------------

    def adopt(self, generation_id: str, work_id: str, *, taken_over: bool) -> None:
        """Own a generation: load its state and, after a takeover, process what the last owner left."""
        if generation_id in self.owned:
            return
        meta: dict[str, str] = self.client.hgetall(keys.gen_meta(generation_id)) if generation_id else {}  # type: ignore[assignment]
        if not meta or meta.get("status") in FINISHED_STATUSES:
            # Unknown, expired or already finished: nothing left to do for it.
            self._release_work(work_id)
            return
        state = GenerationState.from_meta(generation_id, work_id, meta)
        state.resumed = state.resumed or taken_over
        self.owned[generation_id] = state
        self.chain.start(state)
        if taken_over:
            self._process_left_over(generation_id)

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
            if start == "0-0":
                return

    def process(self, generation_id: str, entries: Iterable[tuple[str, dict[str, str]]]) -> int:
        """Run the chain over a batch of raw entries of one generation and commit it atomically."""
        state = self.owned[generation_id]
        out_key = keys.gen_out(generation_id)
        maxlen = self.settings.redis_stream_max_length
        pipe = self.client.pipeline(transaction=True)
        acked: list[str] = []
        terminal: Event | None = None
        for entry_id, fields in entries:
            acked.append(entry_id)
            if state.finished:
                continue  # anything after the terminal entry is acknowledged and dropped
            event = decode_raw(entry_id, fields)
            out = self.chain.process(state, event)
            if out is not None:
                out.data["seq"] = state.seq
                state.seq += 1
                encoded = encode_out(out)
                pipe.xadd(out_key, encoded, id=entry_id, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                if state.session_id:
                    session_fields = {
                        "event": out.type,
                        "data": orjson.dumps({**out.data, "generation_id": generation_id}),
                        "entry_id": entry_id,
                    }
                    pipe.xadd(
                        keys.session_out(state.session_id),
                        session_fields,  # type: ignore[arg-type]
                        maxlen=maxlen,
                        approximate=True,
                    )
            if event.terminal:
                state.finished = True
                terminal = out or event
        if not acked:
            return 0
        pipe.xack(keys.gen_raw(generation_id), self.group, *acked)
        state.meta_updates["seq"] = state.seq
        state.meta_updates["last_id"] = acked[-1]
        pipe.hset(keys.gen_meta(generation_id), mapping=state.meta_updates)  # type: ignore[arg-type]
        if terminal is not None:
            retention_ms = self.settings.redis_stream_retention_ms
            for key in keys.generation_keys(generation_id):
                pipe.pexpire(key, retention_ms)
            if state.session_id:
                pipe.pexpire(keys.session_out(state.session_id), retention_ms)
                pipe.pexpire(keys.session_index(state.session_id), retention_ms * 2)
        results = pipe.execute(raise_on_error=False)
        state.meta_updates = {}
        self._check(generation_id, results)
        if terminal is not None:
            self.chain.finish(state, terminal)
            self._release_work(state.work_id)
            self.owned.pop(generation_id, None)
        return len(acked)

    def _check(self, generation_id: str, results: list[Any]) -> None:
        for result in results:
            if isinstance(result, redis.ResponseError):
                if "equal or smaller" in str(result):
                    # Already written by an earlier owner of this generation: the id makes it a no-op.
                    logger.warning("Generation %s: entry already in :out; skipped.", generation_id)
                    continue
                if isinstance(result, redis.ConnectionError):
                    raise result
                logger.error("Generation %s: commit step failed: %s", generation_id, result)
            elif isinstance(result, redis.ConnectionError):
                raise result

    def _release_work(self, work_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(keys.WORK_STREAM, self.group, work_id)
        pipe.xdel(keys.WORK_STREAM, work_id)
        pipe.execute()

    def _forget(self, generation_id: str) -> None:
        state = self.owned.pop(generation_id, None)
        if state is not None:
            logger.warning("Generation %s has no raw stream any more; released.", generation_id)
            self._release_work(state.work_id)

    def _recover_missing_groups(self) -> None:
        for gid in list(self.owned):
            try:
                groups = self.client.xinfo_groups(keys.gen_raw(gid))
            except redis.ResponseError:
                groups = []
            if not any(group.get("name") == self.group for group in groups):
                self._forget(gid)

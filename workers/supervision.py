"""Supervision of the Celery attempts behind the generations a consumer owns, and ending a generation early.

An attempt renews its lease while it runs. One whose lease ran out (its Celery worker died) is enqueued again
or, after ``GENERATION_MAX_ATTEMPTS``, ended with ``worker_lost``; one that no worker started in time ends with
``queue_timeout``, an external producer that went quiet with ``producer_timeout``. The task of an attempt
still waiting to start ``TASK_RESEND_S`` after it was sent is sent again: its message may have been lost
between the queue and the claim; at once when a worker has died since it was sent (the worker may have taken it).
Not while tasks wait in the broker's queue: the attempt may just be waiting its turn there, and a copy would only
lengthen the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from bridge import keys, liveness, scripts
from bridge.events import EventType
from bridge.scripts import Status
from bridge.settings import Settings
from workers import metrics

logger = logging.getLogger(__name__)

Enqueue = Callable[[str], None]
# How many tasks wait in the broker's queue (bridge.task_queue.waiting_tasks).
WaitingTasks = Callable[[], int]


def fail(client: redis.Redis, settings: Settings, generation_id: str, code: str, message: str) -> None:
    """End a generation with an error, whatever attempt holds it (the attempt is fenced off)."""
    logger.warning(
        "Generation %s ends with %s: %s", generation_id, code, message, extra={"generation_id": generation_id}
    )
    data = orjson.dumps({"code": code, "message": message})
    scripts.fail(client, generation_id, EventType.ERROR.value, data, max_length=settings.redis_stream_max_length)


class Supervisor:
    """Checks the leases of the generations a consumer owns, at each of its heartbeats."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        enqueue: Enqueue | None,
        waiting_tasks: WaitingTasks | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.enqueue = enqueue
        self.waiting_tasks = waiting_tasks

    def release_dead_workers(self, generation_ids: list[str]) -> int:
        """Release the leases of the attempts whose worker's heartbeat stopped (``bridge.liveness``), so that
        ``supervise`` starts their new attempts now, not when the leases run out. Returns when a worker that has
        since died may last have taken a task (0: none died), for ``supervise`` to send again at once the tasks
        not started that were sent before then. One ``ZRANGEBYSCORE`` when no worker died; a worker dead for
        long is struck off, once every consumer has had time to look."""
        dead_after_ms = self.settings.dead_after_ms
        stamps = liveness.last_stamps_of_dead(self.client, keys.WORKERS_ZSET, dead_after_ms)
        if not stamps:
            return 0
        # A worker dies between its last stamp and the next one it would have made.
        lost_before_ms = max(stamps.values()) + int(liveness.beat_interval_s(dead_after_ms) * 1000)
        if not generation_ids:
            return lost_before_ms
        pipe = self.client.pipeline(transaction=False)
        for gid in generation_ids:
            pipe.hmget(keys.gen_meta(gid), "worker", "attempt")
        for gid, (worker, attempt) in zip(generation_ids, pipe.execute(), strict=True):
            if worker in stamps and attempt and scripts.release_lease(self.client, gid, int(attempt)):
                logger.warning(
                    "Generation %s: worker %s stopped (no heartbeat for %s ms); attempt %s released.",
                    gid,
                    worker,
                    dead_after_ms,
                    attempt,
                    extra={"generation_id": gid},
                )
        forget_before = int(time.time() * 1000) - dead_after_ms - 10 * self.settings.consumer_heartbeat_ms
        self.client.zremrangebyscore(keys.WORKERS_ZSET, "-inf", forget_before)
        return lost_before_ms

    def supervise(self, generation_ids: list[str], *, lost_before_ms: int = 0) -> None:
        """Restart or end generations whose attempt stopped renewing its lease, or that never started;
        ``lost_before_ms`` (``release_dead_workers``): a task not started that was sent before then may have been
        taken by a worker that died, and is sent again at once."""
        if not generation_ids:
            return
        settings = self.settings
        verdicts = scripts.supervise(
            self.client,
            generation_ids,
            max_attempts=settings.generation_max_attempts,
            queue_timeout_ms=int(settings.queue_timeout_s * 1000),
            resend_ms=int(settings.task_resend_s * 1000) if self.enqueue is not None else 0,
            max_resends=settings.task_max_resends,
            lost_before_ms=lost_before_ms,
        )
        # The broker is asked only when a task is due to be sent again (rare): never at every heartbeat.
        due = [gid for gid, verdict in verdicts.items() if verdict is Status.RESEND]
        if due and self._backlog():
            self._hold_back(due)
            verdicts = {gid: verdict for gid, verdict in verdicts.items() if verdict is not Status.RESEND}
        for gid in generation_ids:
            # One whose slot is moving has no verdict: supervised at the next heartbeat, on its new node.
            self._act(gid, verdicts.get(gid, Status.NOTHING))

    def _hold_back(self, generation_ids: list[str]) -> None:
        """Re-sends not made while tasks wait in the queue are not used up: the same wait again, then the queue is
        asked again. One pipelined round trip for all of them."""
        pipe = self.client.pipeline(transaction=False)
        for gid in generation_ids:
            pipe.hincrby(keys.gen_meta(gid), "resends", -1)
        pipe.execute()

    def _backlog(self) -> bool:
        """Whether tasks wait in the broker's queue (an attempt not started may be one of them): re-sends wait
        until it has drained. Unknown (no way to ask, or the broker does not answer) counts as no backlog."""
        if self.waiting_tasks is None:
            return False
        try:
            return self.waiting_tasks() > 0
        except Exception as exc:
            logger.warning("Could not count the tasks waiting in the broker's queue: %s", exc)
            return False

    def _act(self, gid: str, verdict: Status) -> None:
        if verdict is Status.REQUEUE and self.enqueue is not None:
            logger.warning("Generation %s lost its worker; enqueuing a new attempt.", gid, extra={"generation_id": gid})
            self._requeue(gid)
        elif verdict in (Status.REQUEUE, Status.EXHAUSTED):
            self._fail(gid, "worker_lost", "The worker running this generation stopped, and it was not retried.")
        elif verdict is Status.QUEUE_TIMEOUT:
            timeout_s = self.settings.queue_timeout_s
            self._fail(gid, "queue_timeout", f"No worker started this generation within {timeout_s:g} s.")
        elif verdict is Status.RESEND:
            logger.warning("Generation %s was not started; sending its task again.", gid, extra={"generation_id": gid})
            self._resend(gid)
        elif verdict is Status.PRODUCER_SILENT:
            self._fail(gid, "producer_timeout", "The external producer sent nothing for too long.")

    def _fail(self, generation_id: str, code: str, message: str) -> None:
        fail(self.client, self.settings, generation_id, code, message)

    def _requeue(self, generation_id: str) -> None:
        assert self.enqueue is not None
        try:
            self.enqueue(generation_id)
            metrics.REQUEUES.inc()
        except Exception as exc:
            # Not enqueued: take the mark back so that the next round tries again.
            logger.warning("Generation %s could not be enqueued: %s", generation_id, exc)
            attempt: Any = self.client.hget(keys.gen_meta(generation_id), "requeued_attempt")
            if attempt is not None:
                scripts.unmark_requeue(self.client, generation_id, attempt)

    def _resend(self, generation_id: str) -> None:
        assert self.enqueue is not None
        try:
            self.enqueue(generation_id)
            metrics.RESENDS.inc()
        except Exception as exc:
            # Counted as sent all the same: the next re-send, later, or QUEUE_TIMEOUT_S bounds the wait.
            logger.warning("Generation %s could not be sent again: %s", generation_id, exc)

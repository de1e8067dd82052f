"""The consumer worker as Celery's monitors (Flower) see it: a worker whose tasks are the generations it processes.

Celery's event protocol, sent through the broker: ``worker-online`` at start, ``worker-heartbeat`` every
``HEARTBEAT_S`` (Flower marks a worker offline when they stop coming), ``worker-offline`` on a clean stop.
Each generation the consumer owns is a task ``tokenbridge.process_generation`` whose id is
``<generation id>@<consumer name>``, so a takeover is a new task on the new owner:

| the consumer                                   | the task event                                  |
| ---------------------------------------------- | ----------------------------------------------- |
| takes the generation (from ``llm:work``, or over) | ``task-received``                            |
| processes its first entry                      | ``task-started``                                |
| commits ``done`` / ``error`` / ``cancelled``   | ``task-succeeded`` / ``task-failed`` / ``task-revoked`` |
| hands it back, or lost it to another consumer  | ``task-retried`` (it goes on as another task)   |
| finds its streams gone                         | ``task-revoked`` (expired)                      |

The consumer's loop only records a state change (an append to a bounded deque); a thread of its own sends the
events, so a slow or absent broker never slows processing. Nothing here runs per token. What Flower asks a worker
directly (``inspect stats``, ``active``...) is answered by ``workers.celery_control`` from the same record.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from celery import Celery

from bridge.connections import Outage
from bridge.events import Event, EventType
from workers.processors import GenerationState

if TYPE_CHECKING:
    from workers.celery_control import RemoteControl

logger = logging.getLogger(__name__)

PROCESS_TASK = "tokenbridge.process_generation"
# Celery's own worker heartbeat interval; Flower gives a worker twice this before it shows it offline.
HEARTBEAT_S = 2.0
# Events kept while the broker is unreachable; the oldest go first.
BUFFER_SIZE = 10_000
_BACKOFF_MAX_S = 10.0
# How long the sender waits for more task events before it sends a batch (Flower is that much later).
_BATCH_S = 0.25


def _version() -> str:
    try:
        return metadata.version("tokenbridge")
    except metadata.PackageNotFoundError:
        return "unknown"


SOFTWARE_INFO = {"sw_ident": "tokenbridge-consumer", "sw_ver": _version(), "sw_sys": platform.system()}


def worker_hostname(consumer_name: str) -> str:
    """The name under which Flower lists a consumer worker."""
    return f"consumer@{consumer_name}"


def task_id(generation_id: str, consumer_name: str) -> str:
    """The Celery task id of a generation processed by one consumer."""
    return f"{generation_id}@{consumer_name}"


@dataclass(slots=True)
class OwnedTask:
    """A generation the consumer owns, as the task Flower knows it by."""

    uuid: str
    generation_id: str
    kwargs: dict[str, Any]
    started_at: float | None = None


class CeleryEvents:
    """Records the consumer's state changes as Celery events and sends them from a thread of its own."""

    def __init__(
        self,
        app: Celery,
        consumer_name: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        buffer_size: int = BUFFER_SIZE,
        remote_control: bool = True,
    ) -> None:
        self.app = app
        self.consumer_name = consumer_name
        self.hostname = worker_hostname(consumer_name)
        self.heartbeat_s = heartbeat_s
        self.processed = 0
        # Changed by the consumer's thread only, under the lock; the remote control thread copies it under the lock.
        self._tasks: dict[str, OwnedTask] = {}
        self._tasks_lock = threading.Lock()
        self.pending: deque[tuple[str, dict[str, Any]]] = deque(maxlen=buffer_size)
        self._wake = threading.Event()
        self._beat_now = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The waits while the broker cannot take events, and what is logged of them.
        self._outage = Outage(
            logger,
            f"Consumer {consumer_name} cannot send Celery events",
            f"Consumer {consumer_name} sends Celery events again",
            first_s=0.5,
            max_s=_BACKOFF_MAX_S,
        )
        # Answers Flower's inspect calls (``GET /api/workers``, a worker's page) from a thread of its own.
        self.control: RemoteControl | None = None
        if remote_control:
            from workers.celery_control import RemoteControl  # it reads this module's record

            self.control = RemoteControl(app, self)

    # -- the consumer's side: one call per state change of a generation ------------------------------

    def received(self, state: GenerationState, *, taken_over: bool) -> None:
        gid = state.generation_id
        kwargs = {"model": state.model, "session_id": state.session_id, "taken_over": taken_over}
        task = OwnedTask(task_id(gid, self.consumer_name), gid, kwargs)
        with self._tasks_lock:
            self._tasks[gid] = task
        self._record(
            "task-received",
            uuid=task.uuid,
            name=PROCESS_TASK,
            args=repr([gid]),
            kwargs=repr(kwargs),
            root_id=task.uuid,
            parent_id=None,
            retries=0,
            eta=None,
            expires=None,
        )

    def started(self, generation_id: str) -> None:
        """Called for every batch of a generation; only its first one is an event."""
        task = self._tasks.get(generation_id)
        if task is None or task.started_at is not None:
            return
        task.started_at = time.time()
        self._record("task-started", uuid=task.uuid, timestamp=task.started_at)

    def ended(self, state: GenerationState, terminal: Event) -> None:
        """After the terminal event's commit: succeeded (``done``), failed (``error``) or revoked (``cancelled``)."""
        task = self._pop(state.generation_id)
        if task is None:
            return
        self.processed += 1
        now = time.time()
        data = terminal.data
        if terminal.type == EventType.DONE.value:
            result = {"finish_reason": data.get("finish_reason"), "completion_tokens": state.completion_tokens}
            runtime = now - (task.started_at or now)
            self._record("task-succeeded", uuid=task.uuid, result=repr(result), runtime=runtime, timestamp=now)
        elif terminal.type == EventType.ERROR.value:
            exception = f"GenerationError('{data.get('code')}: {data.get('message')}')"
            self._record("task-failed", uuid=task.uuid, exception=exception, traceback="", timestamp=now)
        else:
            self._record("task-revoked", uuid=task.uuid, terminated=False, signum=None, expired=False, timestamp=now)

    def handed_on(self, generation_id: str, reason: str) -> None:
        """The consumer let an unfinished generation go to another consumer: ``task-retried`` (a new task there)."""
        task = self._pop(generation_id)
        if task is not None:
            self._record("task-retried", uuid=task.uuid, exception=f"HandedOn({reason!r})", traceback="")

    def vanished(self, generation_id: str) -> None:
        """The generation's streams are gone (expired or deleted) before it ended: ``task-revoked``, expired."""
        task = self._pop(generation_id)
        if task is not None:
            self._record("task-revoked", uuid=task.uuid, terminated=False, signum=None, expired=True)

    def _pop(self, generation_id: str) -> OwnedTask | None:
        with self._tasks_lock:
            return self._tasks.pop(generation_id, None)

    # -- what the remote control thread reads ----------------------------------------------------------

    def owned_tasks(self) -> list[OwnedTask]:
        """The generations owned now, oldest first (safe to call from any thread)."""
        with self._tasks_lock:
            return list(self._tasks.values())

    def beat(self) -> None:
        """Send a heartbeat now rather than at the next interval."""
        self._beat_now.set()
        self._wake.set()

    def _record(self, event_type: str, **fields: Any) -> None:
        fields.setdefault("timestamp", time.time())
        self.pending.append((event_type, fields))
        # Only wake the sender if it sleeps: the sender clears the flag before it looks at ``pending``, so an event
        # recorded while the flag is still set is seen by that look (and the consumer skips a lock and notify).
        if not self._wake.is_set():
            self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread (``worker-online``, heartbeats, the recorded events) and the remote control."""
        self._thread = threading.Thread(target=self._run, name="celery-events", daemon=True)
        self._thread.start()
        if self.control is not None:
            self.control.start()

    def close(self, *, timeout_s: float = 2.0) -> None:
        """Send what is recorded and ``worker-offline``, stop answering; give up after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        if self.control is not None:
            self.control.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.control is not None:
            self.control.close(timeout_s=max(0.0, deadline - time.monotonic()))

    # -- the sender thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                with self.app.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1)
                    # Task events go out in batches (one ``task.multi`` message per flush, which Flower reads
                    # like single ones): a message per event cost the consumer a tenth of its CPU under load.
                    dispatcher = self.app.events.Dispatcher(
                        connection, hostname=self.hostname, enabled=True, buffer_group=("task",), buffer_limit=1000
                    )
                    self._serve(dispatcher)
                    return
            except Exception as exc:
                if self._stopping.is_set():
                    logger.warning("Consumer %s could not send worker-offline to Flower: %s", self.consumer_name, exc)
                    return
                self._stopping.wait(self._outage.failed(exc))

    def _serve(self, dispatcher: Any) -> None:
        dispatcher.send("worker-online", **self._worker_fields())
        self._outage.answered()
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._stopping.is_set():
            if self.pending:
                # Let the events of the next moments join this batch.
                self._stopping.wait(_BATCH_S)
            self._flush(dispatcher)
            if time.monotonic() >= next_beat or self._beat_now.is_set():
                self._beat_now.clear()
                dispatcher.send("worker-heartbeat", **self._worker_fields())
                next_beat = time.monotonic() + self.heartbeat_s
            self._wake.wait(max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
        self._flush(dispatcher)
        dispatcher.send("worker-offline", **self._worker_fields())

    def _flush(self, dispatcher: Any) -> None:
        while self.pending:
            event_type, fields = self.pending.popleft()
            try:
                dispatcher.send(event_type, **fields)
            except Exception:
                self.pending.appendleft((event_type, fields))  # sent again once the broker is back
                raise
        dispatcher.flush()  # the batch of task events (kept and sent again if the broker is away)

    def _worker_fields(self) -> dict[str, Any]:
        return {
            "freq": self.heartbeat_s,
            "active": len(self._tasks),
            "processed": self.processed,
            "loadavg": _load_average(),
            **SOFTWARE_INFO,
        }


def _load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]

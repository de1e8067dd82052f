"""The consumer worker answering Celery's remote control, so that Flower's inspect calls find it like a worker.

Flower fills ``GET /api/workers`` and a worker's page by broadcasting inspect commands on the ``celery.pidbox``
mailbox and collecting the replies: ``stats``, ``active_queues``, ``registered`` and ``conf`` for every worker,
and ``active``, ``reserved``, ``scheduled`` and ``revoked`` as well for one. A thread of the consumer listens there
as ``consumer@<name>`` (a kombu ``Mailbox.Node``) and answers the commands sent to all nodes, or to a destination
or pattern that names it:

| command                                | the consumer's answer                                              |
| -------------------------------------- | ------------------------------------------------------------------ |
| ``ping``                               | ``{"ok": "pong"}``                                                 |
| ``stats``                              | pid, clock, uptime, pool, broker (no password), rusage, processed  |
| ``active``                             | the generations it owns now, one task each (``OwnedTask``)         |
| ``registered``                         | ``["tokenbridge.process_generation"]``                             |
| ``reserved`` ``scheduled`` ``revoked`` | ``[]``: a consumer holds no Celery messages                        |
| ``active_queues``                      | ``[]``: it reads Redis streams, not Celery queues                  |
| ``conf``                               | serializers, control exchange, broker URL without its password     |
| ``query_task``, ``clock``, ``report``, ``hello``, ``heartbeat``, ``enable_events`` | as a Celery worker |

Every other command, among them those that would change a Celery worker (``shutdown``, ``pool_restart``,
``pool_grow``, ``autoscale``, ``rate_limit``, ``time_limit``, ``revoke``, ``terminate``, ``add_consumer``,
``cancel_consumer``, ``disable_events``), changes nothing: the reply, when one is asked for, is
``{"error": "... not supported by a tokenbridge consumer ..."}``. A generation is cancelled through the API.

The thread is the consumer's, not its loop's: a slow or absent broker never slows processing; it reconnects
with backoff and stops with the consumer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu.clocks import LamportClock
from kombu.common import ignore_errors
from kombu.pidbox import Node
from kombu.utils.url import maybe_sanitize_url

from bridge.connections import Outage
from workers.celery_events import PROCESS_TASK, SOFTWARE_INFO, CeleryEvents, OwnedTask

logger = logging.getLogger(__name__)

# How long one wait for a command lasts; the thread sees a stop within this.
POLL_S = 0.5
_BACKOFF_MAX_S = 10.0
# What a Celery worker's stats say of its broker connection, less the password.
_BROKER_FIELDS = (
    "hostname",
    "userid",
    "virtual_host",
    "port",
    "insist",
    "ssl",
    "transport",
    "connect_timeout",
    "transport_options",
    "login_method",
    "uri_prefix",
    "heartbeat",
)

Handler = Callable[..., Any]


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def refused(value: str) -> dict[str, Any]:
    return {"error": value}


class RemoteControl:
    """Answers Celery's remote control commands for one consumer, from a thread of its own."""

    def __init__(self, app: Celery, events: CeleryEvents, *, poll_s: float = POLL_S) -> None:
        self.app = app
        self.events = events
        self.hostname = events.hostname
        self.lamport: LamportClock = app.clock  # type: ignore[attr-defined]
        self.poll_s = poll_s
        self.started_at = time.time()
        self.broker: dict[str, Any] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = Outage(
            logger,
            f"Consumer {events.consumer_name} cannot answer Celery's remote control",
            f"Consumer {events.consumer_name} answers Celery's remote control again",
            first_s=0.5,
            max_s=_BACKOFF_MAX_S,
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening on the broadcast mailbox (``celery.pidbox``) as ``consumer@<name>``."""
        self._thread = threading.Thread(target=self._run, name="celery-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (within ``poll_s``)."""
        self._stopping.set()

    def close(self, *, timeout_s: float = 2.0) -> None:
        """Stop listening; give up waiting for the thread after ``timeout_s``."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the listening thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    connection.ensure_connection(max_retries=1)
                    self._listen(connection)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                self._stopping.wait(self._outage.failed(exc))

    def _listen(self, connection: Any) -> None:
        mailbox: Any = self.app.control.mailbox  # type: ignore[attr-defined]
        node = mailbox(connection).Node(self.hostname, state=self, handlers=_Handlers(HANDLERS))
        node.channel = connection.channel()
        consumer = node.listen(callback=lambda body, message: self._on_message(node, body, message))
        try:
            info = connection.info()
            self.broker = {field: info.get(field) for field in _BROKER_FIELDS}
            self._outage.answered()
            logger.info("Consumer %s answers Celery's remote control as %s.", self.events.consumer_name, self.hostname)
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=self.poll_s)
                # AMQP: the broker drops a connection that sends no heartbeats.
                connection.heartbeat_check()
        finally:
            ignore_errors(connection, consumer.cancel)

    def _on_message(self, node: Node, body: Any, message: Any) -> None:
        # As a Celery worker does: clients seldom send a clock to adjust to.
        self.lamport.forward()
        try:
            node.handle_message(body, message)
        except Exception:
            logger.exception("Consumer %s could not answer a Celery control command.", self.events.consumer_name)

    # -- the inspect commands ------------------------------------------------------------------------

    def ping(self, **_: Any) -> dict[str, Any]:
        return ok("pong")

    def stats(self, **_: Any) -> dict[str, Any]:
        owned = len(self.events.owned_tasks())
        return {
            "total": {PROCESS_TASK: self.events.processed},
            "pid": os.getpid(),
            "clock": str(self.lamport.value),
            "uptime": round(time.time() - self.started_at),
            # One loop processes every generation the consumer owns.
            "pool": {
                "implementation": "tokenbridge stream consumer",
                "max-concurrency": 1,
                "processes": [os.getpid()],
                "owned-generations": owned,
            },
            "broker": self.broker,
            "prefetch_count": 0,
            "rusage": _rusage(),
            "consumer_name": self.events.consumer_name,
            **SOFTWARE_INFO,
        }

    def active(self, safe: bool = False, **_: Any) -> list[dict[str, Any]]:
        return [self._task_info(task, safe=safe) for task in self.events.owned_tasks()]

    def query_task(self, ids: str | list[str] | tuple[str, ...] = (), **_: Any) -> dict[str, Any]:
        wanted = {ids} if isinstance(ids, str) else set(ids)
        return {
            task.uuid: ["active", self._task_info(task, safe=False)]
            for task in self.events.owned_tasks()
            if task.uuid in wanted
        }

    def registered(self, **_: Any) -> list[str]:
        return [PROCESS_TASK]

    def nothing(self, **_: Any) -> list[Any]:
        """``reserved``, ``scheduled``, ``revoked``, ``active_queues``: a consumer holds no Celery message."""
        return []

    def conf(self, **_: Any) -> dict[str, Any]:
        conf = self.app.conf
        return {
            "broker_url": maybe_sanitize_url(conf.broker_url or ""),
            "task_serializer": conf.task_serializer,
            "accept_content": list(conf.accept_content),
            "event_serializer": conf.event_serializer,
            "control_exchange": conf.control_exchange,
            "worker_hostname": self.hostname,
        }

    def clock(self, **_: Any) -> dict[str, Any]:
        return {"clock": self.lamport.value}

    def report(self, **_: Any) -> dict[str, Any]:
        owned = len(self.events.owned_tasks())
        return ok(
            f"{self.hostname}: tokenbridge stream consumer {SOFTWARE_INFO['sw_ver']}, pid {os.getpid()}, "
            f"{owned} generations owned, {self.events.processed} processed"
        )

    def hello(self, from_node: str = "", revoked: Any = None, **_: Any) -> dict[str, Any] | None:
        """A Celery worker starting (mingle) asks its peers for their revoked ids: a consumer has none."""
        if from_node == self.hostname:
            return None
        return {"revoked": [], "clock": self.lamport.forward()}

    def heartbeat(self, **_: Any) -> None:
        self.events.beat()

    def enable_events(self, **_: Any) -> dict[str, Any]:
        # Flower sends this every few seconds; a consumer's events are on while CONSUMER_CELERY_EVENTS is.
        return ok("task events already enabled")

    def refuse(self, method: str, **_: Any) -> dict[str, Any]:
        logger.warning("Consumer %s ignored the Celery control command %s.", self.events.consumer_name, method)
        return refused(
            f"{method} is not supported by a tokenbridge consumer ({self.hostname}); nothing was changed. "
            "Stop a consumer with SIGTERM, cancel a generation with POST /v1/generations/{id}/cancel."
        )

    def _task_info(self, task: OwnedTask, *, safe: bool) -> dict[str, Any]:
        """A generation in the shape of a Celery ``Request.info()``; ``safe`` gives args and kwargs as reprs."""
        args = [task.generation_id]
        return {
            "id": task.uuid,
            "name": PROCESS_TASK,
            "args": repr(args) if safe else args,
            "kwargs": repr(task.kwargs) if safe else dict(task.kwargs),
            "type": PROCESS_TASK,
            "hostname": self.hostname,
            "time_start": task.started_at,
            "acknowledged": True,
            "delivery_info": {"redelivered": bool(task.kwargs.get("taken_over"))},
            "worker_pid": os.getpid(),
        }


HANDLERS: dict[str, Handler] = {
    "ping": RemoteControl.ping,
    "stats": RemoteControl.stats,
    "active": RemoteControl.active,
    "dump_active": RemoteControl.active,
    "query_task": RemoteControl.query_task,
    "registered": RemoteControl.registered,
    "dump_tasks": RemoteControl.registered,
    "reserved": RemoteControl.nothing,
    "dump_reserved": RemoteControl.nothing,
    "scheduled": RemoteControl.nothing,
    "dump_schedule": RemoteControl.nothing,
    "revoked": RemoteControl.nothing,
    "dump_revoked": RemoteControl.nothing,
    "active_queues": RemoteControl.nothing,
    "conf": RemoteControl.conf,
    "dump_conf": RemoteControl.conf,
    "clock": RemoteControl.clock,
    "report": RemoteControl.report,
    "hello": RemoteControl.hello,
    "heartbeat": RemoteControl.heartbeat,
    "enable_events": RemoteControl.enable_events,
}


class _Handlers(dict[str, Handler]):
    """The handler table of the node: a command it does not know is refused, never run."""

    def __missing__(self, method: str) -> Handler:
        def refuse(control: RemoteControl, **arguments: Any) -> dict[str, Any]:
            return control.refuse(method, **arguments)

        return refuse


def _rusage() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "utime": usage.ru_utime,
        "stime": usage.ru_stime,
        "maxrss": usage.ru_maxrss,
        "minflt": usage.ru_minflt,
        "majflt": usage.ru_majflt,
        "nvcsw": usage.ru_nvcsw,
        "nivcsw": usage.ru_nivcsw,
    }

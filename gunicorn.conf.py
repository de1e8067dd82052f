"""gunicorn hooks for ``web`` (the Procfile loads them with ``-c gunicorn.conf.py``).

Kept outside the ``app`` package: importing it must not import Flask, Redis or ssl into the master before
the gevent worker monkey-patches.

On SIGTERM a gunicorn worker stops accepting and waits for open responses, but an SSE response never
ends by itself. Stopping the hub ends every open stream at once (no terminal event: clients reconnect to
another instance and resume with Last-Event-ID), so a deploy does not wait out the graceful timeout.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from typing import Any

# If access logs are turned on (--access-logfile), they carry the path without the query string, so that
# stream tokens (?token=) never reach a log.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(D)sus'

# How long an idle connection is kept open for its next request. Longer than any proxy in front keeps its
# idle connections to the backend (nginx's upstream keepalive_timeout and AWS ALB's idle timeout are 60 s):
# otherwise a proxy can send a request on a connection gunicorn is closing, and a POST sent that way comes
# back as a 502 (gunicorn's own default, 2 s, is meant for clients connected directly). An idle connection
# costs the gevent worker a greenlet and a socket.
keepalive = int(os.environ.get("WEB_KEEPALIVE_S", "75"))


def on_starting(server: Any) -> None:
    # Every worker writes its metrics here and /metrics adds them up (prometheus-client multiprocess mode).
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tokenbridge-metrics-")


def child_exit(server: Any, worker: Any) -> None:
    # What prometheus_client.multiprocess.mark_process_dead does, without importing it (and ssl) here.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in glob.glob(os.path.join(directory, f"gauge_live*_{worker.pid}.db")):
            os.remove(path)


def post_worker_init(worker: Any) -> None:
    import gevent

    from app.gunicorn_errors import answer_in_json, log_unanswered
    from bridge.startup import freeze_startup_objects

    # What gunicorn refuses itself (a request line over limit_request_line: 414, ...) is answered in JSON, not HTML.
    answer_in_json(worker)
    app = worker.wsgi  # the Flask app (log_unanswered wraps worker.wsgi)
    log_unanswered(worker)  # gunicorn closes a request that met a socket error with a debug line at most
    freeze_startup_objects()  # the app is loaded: no later collection scans it
    idle = track_idle_connections(worker)

    def end_streams_on_shutdown() -> None:
        while worker.alive:
            gevent.sleep(0.2)
        services = getattr(app, "extensions", {}).get("tokenbridge")
        if services is not None:
            services.hub.stop(timeout_s=2.0)
            services.presence.close()  # its readers are gone: stop counting them at once
        # A connection waiting for its next request would hold the worker until its keep-alive (or the graceful
        # timeout) ran out: close them now. One in the middle of a request ends after its response, as always.
        for greenlet in list(idle):
            greenlet.kill(IdleConnectionClosed, block=False)

    gevent.spawn(end_streams_on_shutdown)


class IdleConnectionClosed(Exception):
    """Ends a kept-alive connection's wait for its next request at shutdown (gunicorn would log a GreenletExit
    there as an error: one per idle connection, on every deploy)."""


def track_idle_connections(worker: Any) -> set[Any]:
    """The greenlets of ``worker`` waiting for a connection's next request, kept up to date.

    gunicorn's gevent worker waits for each request of a kept-alive connection inside ``timeout_ctx()`` (a
    ``gevent.Timeout`` of ``keepalive`` seconds that ends the wait quietly); this one also records the waiting
    greenlet while it waits.
    """
    import gevent

    idle: set[Any] = set()
    keepalive_s = worker.cfg.keepalive

    @contextlib.contextmanager
    def waiting_for_a_request() -> Iterator[None]:
        current = gevent.getcurrent()
        idle.add(current)
        try:
            with gevent.Timeout(keepalive_s, False):
                yield
        except IdleConnectionClosed:
            pass  # no request came: gunicorn closes the connection quietly, as after its keep-alive
        finally:
            idle.discard(current)

    worker.timeout_ctx = waiting_for_a_request
    return idle

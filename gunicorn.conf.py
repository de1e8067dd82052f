"""gunicorn hooks for ``web`` (the Procfile loads them with ``-c gunicorn.conf.py``).

Kept outside the ``app`` package: importing it must not import Flask, Redis or ssl into the master before
the gevent worker monkey-patches.

On SIGTERM a gunicorn worker stops accepting and waits for open responses, but an SSE response never
ends by itself. Stopping the hub ends every open stream at once (no terminal event: clients reconnect to
another instance and resume with Last-Event-ID), so a deploy does not wait out the graceful timeout.
"""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Any

# If access logs are turned on (--access-logfile), they carry the path without the query string, so that
# stream tokens (?token=) never reach a log.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(D)sus'


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

    def end_streams_on_shutdown() -> None:
        while worker.alive:
            gevent.sleep(0.2)
        services = getattr(worker.wsgi, "extensions", {}).get("tokenbridge")
        if services is not None:
            services.hub.stop(timeout_s=2.0)
            services.presence.close()  # its readers are gone: stop counting them at once

    gevent.spawn(end_streams_on_shutdown)

"""A worker on the gevent pool honours ``CELERY_SOFT_SHUTDOWN_S`` on SIGTERM.

Celery's cold-shutdown signal handler (SIGTERM with ``REMAP_SIGTERM=SIGQUIT``, SIGQUIT, SIGINT) waits out
``worker_soft_shutdown_timeout`` with a sleep, then cancels the running tasks. Under gevent a signal handler runs
in whatever greenlet the signal interrupts, and a worker waiting for work is in the event loop's own greenlet,
where a sleep cannot wait: the handler failed with ``BlockingSwitchOutError`` ("Unrecoverable error" in the log),
never cancelled anything, and the worker stayed until its last generation ended on its own, however long that
took (a 20 s answer kept a worker given 3 s of soft shutdown for 19.5 s). Here each of those handlers runs in a
greenlet of its own, where it can wait.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

# Celery names its shutdown handlers after the shutdown they start (``celery.apps.worker._shutdown_handler``).
_SHUTDOWN_HANDLERS = ("worker_Cold", "worker_Warm")
_SIGNALS = ("SIGTERM", "SIGQUIT", "SIGINT")
# How long after its soft shutdown a worker may take to stop (Celery's loop turns every 2 s, then it closes its
# connections and hands unacknowledged messages back): 7 s in all with a 2 s soft shutdown.
SHUTDOWN_GRACE_S = 10.0


def exit_after(seconds: float) -> None:
    """End the process in ``seconds`` from an OS thread of its own (gevent's loop may be the thing that is stuck)."""
    from gevent import monkey

    start_new_thread = monkey.get_original("_thread", "start_new_thread")
    sleep = monkey.get_original("time", "sleep")

    def watchdog() -> None:
        sleep(seconds)
        os.write(2, f"worker: still stopping {seconds:g} s after the signal; exiting now.\n".encode())
        os._exit(1)

    start_new_thread(watchdog, ())


def _in_greenlet(handler: Callable[..., Any], exit_after_s: float) -> Callable[[int, FrameType | None], None]:
    import gevent

    watched = False

    def spawn(signum: int, frame: FrameType | None) -> None:
        nonlocal watched
        if not watched:
            watched = True
            exit_after(exit_after_s)
        gevent.spawn(handler, signum, frame)

    spawn.__name__ = f"{handler.__name__}_in_greenlet"
    return spawn


def run_shutdown_handlers_in_greenlets(soft_shutdown_s: float) -> list[str]:
    """Wrap Celery's installed shutdown handlers so that each runs in a new greenlet (a gevent pool only), and the
    first of them starts the countdown to the process's end (``soft_shutdown_s`` + ``SHUTDOWN_GRACE_S``); returns
    the signals wrapped. Handlers Celery installs later (a second SIGTERM during the soft shutdown forces the end)
    stay as they are: they must act at once, in the interrupted greenlet."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        return []
    wrapped = []
    for name in _SIGNALS:
        signum = getattr(signal, name)
        handler = signal.getsignal(signum)
        if callable(handler) and getattr(handler, "__name__", "") in _SHUTDOWN_HANDLERS:
            signal.signal(signum, _in_greenlet(handler, soft_shutdown_s + SHUTDOWN_GRACE_S))
            wrapped.append(name)
    logger.debug("Shutdown handlers run in greenlets of their own: %s.", ", ".join(wrapped) or "none")
    return wrapped

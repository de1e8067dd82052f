"""Under the gevent pool, kombu's broker retry waits yield to the other greenlets (bridge.broker).

Run in a fresh interpreter: the monkey patching must happen the way the `celery worker --pool gevent` command does it.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.procfile import ROOT

SCRIPT = """
import sys, time
sys.argv = ["celery", "-A", "tasks", "worker", "--pool", "gevent"]
from celery.__main__ import maybe_patch_concurrency
maybe_patch_concurrency()
from kombu.utils import functional
before = functional.sleep is time.sleep
from bridge.broker import use_shared_clients
use_shared_clients()
print(before, functional.sleep is time.sleep, time.sleep.__module__)
"""


def test_kombus_retry_wait_is_gevents_sleep_once_the_worker_has_patched() -> None:
    # Given a process patched as `celery worker --pool gevent` patches (gevent's patch_all imports kombu on the way)
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    _before, after, module = run.stdout.split()
    # Then kombu's retry waits are gevent's sleep (with gevent 26.9 and Celery 5.7 it held the blocking time.sleep
    # before: every wait for the broker froze the worker)
    assert (after, module) == ("True", "gevent.hub")

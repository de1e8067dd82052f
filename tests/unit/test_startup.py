"""A process, once ready, keeps what it made while starting out of later garbage collections."""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator
from unittest import mock

import pytest
from celery.signals import worker_ready

from bridge.startup import freeze_startup_objects


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_what_exists_when_ready_is_never_scanned_again() -> None:
    # Given objects a process made while starting, one of them in a reference cycle
    startup = [{"cycle": []} for _ in range(1000)]
    startup[0]["cycle"].append(startup)
    # When the process is ready
    freeze_startup_objects()
    # Then the collector leaves them out: a full collection no longer looks at them
    assert gc.get_freeze_count() >= len(startup)
    scanned = {id(o) for o in gc.get_objects()}
    assert not {id(o) for o in startup} & scanned


def test_the_celery_worker_freezes_once_ready() -> None:
    # (``tasks.celery_app`` is the app itself, which the package names like its module)
    module = importlib.import_module("tasks.celery_app")
    with mock.patch.object(module, "freeze_startup_objects") as freeze:
        worker_ready.send(sender=None)
    freeze.assert_called_once_with()

"""web, worker and consumer, started as the Procfile starts them, refuse a Redis whose data is in another layout of
keys at once, with one message naming both layout versions and the upgrade note, and without touching the data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bridge import keys
from bridge.embedded import EmbeddedRedis
from bridge.layout import LAYOUT_VERSION, UPGRADE_NOTE
from tests.support.procfile import ROOT, procfile_commands

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", ["web", "worker", "consumer"])
def test_each_process_refuses_a_redis_in_another_layout_at_start(
    redis_server: EmbeddedRedis, r: redis.Redis, name: str
) -> None:
    # Given a Redis that a later release wrote in its own layout
    found = LAYOUT_VERSION + 1
    r.set(keys.LAYOUT, found)
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "API_KEYS": "k",
        "SECRET_KEY": "s",
        "LOG_FORMAT": "text",
        "WEB_CONCURRENCY": "1",
        "PORT": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("CELERY_BROKER_URL", None)
    # When the process starts as the Procfile starts it
    try:
        result = subprocess.run(
            ["sh", "-c", procfile_commands()[name]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        layout_after = r.get(keys.LAYOUT)
    finally:
        r.delete(keys.LAYOUT)  # the session's Redis serves later tests' processes
    # Then it stops at once, naming the layout it found, its own and where the upgrade is explained
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"Redis layout version {found}, written by a newer tokenbridge" in output
    assert f"uses Redis layout version {LAYOUT_VERSION}" in output
    assert UPGRADE_NOTE in output
    # And the layout recorded is left as it was
    assert layout_after == str(found)

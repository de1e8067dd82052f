"""The consumer process as the Procfile starts it: it works, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from bridge import keys
from bridge.embedded import EmbeddedRedis
from bridge.settings import Settings
from tests.support import new_generation, wait_for
from tests.support.procfile import ROOT, procfile_commands


def test_consumer_process_processes_then_exits_cleanly_on_sigterm(
    r: redis.Redis, settings: Settings, redis_server: EmbeddedRedis
) -> None:
    # Given the consumer started from the Procfile
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "CONSUMER_HEARTBEAT_MS": "100",
        "CONSUMER_CLAIM_IDLE_MS": "500",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process = subprocess.Popen(
        ["sh", "-c", "exec " + procfile_commands()["consumer"]],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # When a generation is written
        gid = new_generation(r, settings, "gen_proc")
        r.hset(keys.gen_meta(gid), "attempt", 1)
        r.xadd(keys.gen_raw(gid), {"type": "token", "attempt": "1", "data": '{"content":"hi","ts":1}'})
        r.xadd(keys.gen_raw(gid), {"type": "done", "attempt": "1", "data": '{"finish_reason":"stop","usage":{}}'})
        # Then it is processed
        wait_for(lambda: r.hget(keys.gen_meta(gid), "status") == "completed", timeout_s=15)
        assert r.zcard(keys.CONSUMERS_ZSET) == 1
        # And SIGTERM ends the process within a couple of seconds, deregistered
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - sent < 3
        assert r.zcard(keys.CONSUMERS_ZSET) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

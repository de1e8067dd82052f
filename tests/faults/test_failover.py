"""Redis failover under load: a primary and a replica under three Sentinels; the primary is killed mid-load.

Every Procfile process (web, worker, consumer, Flower) is configured with ``REDIS_SENTINELS`` only, and must
follow the promotion by itself. Readers are resuming clients; what they saw is printed and recorded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bridge.embedded import free_port
from tests.support import wait_for
from tests.support.procfile import ROOT
from tests.support.reader import ReadOutcome, ResumingReader
from tests.support.sentinel import MASTER_NAME, SentinelSetup, sentinel_binary
from tests.support.stack import Stack, build_stack

pytestmark = [pytest.mark.slow, pytest.mark.faults]

FLOWER_AUTH = ("ops", "failover-fl0wer")
PROMPT = " ".join(f"w{i}" for i in range(40))
# From the kill to the first generation accepted and completed on the promoted replica.
FAILOVER_BOUND_S = 20.0


@dataclass
class Load:
    """Submits a generation every ``interval_s`` and reads each with a resuming reader."""

    stack: Stack
    interval_s: float = 0.1
    delay_ms: int = 20
    readers: list[tuple[float, ResumingReader]] = field(default_factory=list)
    refused: list[tuple[float, int | str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            at = time.monotonic()
            try:
                response = self.stack.post(
                    "/v1/generations", {"model": "echo", "prompt": PROMPT, "options": {"delay_ms": self.delay_ms}}
                )
            except httpx.HTTPError as exc:
                self.refused.append((at, type(exc).__name__))
            else:
                if response.status_code == 202:
                    reader = ResumingReader([self.stack.base_url], response.json(), self.stack.headers, timeout_s=30)
                    reader.start()
                    self.readers.append((at, reader))
                else:
                    self.refused.append((at, response.status_code))
            self.stop.wait(max(0.0, self.interval_s - (time.monotonic() - at)))

    def completed_since(self, since: float) -> bool:
        """Whether a generation submitted after ``since`` (monotonic) has ended with its exact text."""
        return any(
            at > since and r.outcome.terminal is not None and r.outcome.text == PROMPT for at, r in list(self.readers)
        )

    def finish(self, submitter: threading.Thread, *, readers_within_s: float) -> None:
        """Stops submitting and waits, ``readers_within_s`` in all, for the readers to end."""
        self.stop.set()
        submitter.join(10)
        deadline = time.monotonic() + readers_within_s
        for _, reader in self.readers:
            reader.join(max(0.1, deadline - time.monotonic()))


@pytest.fixture
def sentinel_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, SentinelSetup, int]]:
    binary = sentinel_binary()
    if binary is None:
        pytest.skip("no redis-server that runs as a sentinel (apt-get install redis-server)")
    setup = SentinelSetup(tmp_path / "sentinel", binary=binary).start()
    logs = ROOT / "test-artifacts" / "faults" / request.node.name
    stack = build_stack(
        tmp_path / "unused",
        logs,
        REDIS_URL="redis://localhost/0",  # only its database counts: the sentinels name the master
        REDIS_SENTINELS=setup.addresses,
        REDIS_SENTINEL_MASTER=MASTER_NAME,
        REDIS_WAIT_REPLICAS="1",
        REDIS_RETRY_S="60",
        LEASE_MS="5000",
        FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
    )
    stack.redis.stop()  # build_stack's own server: this stack uses the sentinels' master
    flower_port = free_port()
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.start("flower", PORT=str(flower_port))
        stack.wait_ready()
        yield stack, setup, flower_port
    finally:
        stack.stop_all()
        setup.stop()


def _flower_workers(port: int) -> dict[str, Any]:
    try:
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/workers", params={"status": "true"}, auth=FLOWER_AUTH, timeout=10
        )
    except httpx.HTTPError:
        return {}
    return response.json() if response.status_code == 200 else {}


def _wait(condition: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """How long ``condition`` took to hold (polled every 0.2 s); fails after ``timeout_s``."""
    started = time.monotonic()
    wait_for(condition, timeout_s=timeout_s, interval_s=0.2, message=f"timed out waiting for {what}")
    return time.monotonic() - started


def _tokens_again(outcomes: list[ReadOutcome], promoted_at: float) -> float | None:
    """How long after the promotion the reader that waited longest got its next event (monotonic times)."""
    ends = [b for o in outcomes for a, b in zip(o.arrivals, o.arrivals[1:], strict=False) if a < promoted_at < b]
    return round(max(ends) - promoted_at, 2) if ends else None


def _summary(outcomes: list[ReadOutcome]) -> dict[str, Any]:
    terminals = Counter(
        (o.terminal.event if o.terminal.event != "error" else f"error:{o.terminal.data.get('code')}")
        if o.terminal
        else "none"
        for o in outcomes
    )
    exact = sum(1 for o in outcomes if o.terminal and o.terminal.event == "done" and o.text == PROMPT)
    return {
        "generations": len(outcomes),
        "exact": exact,
        "terminals": dict(terminals),
        "wrong_text": sum(1 for o in outcomes if o.terminal and o.terminal.event == "done" and o.text != PROMPT),
        "no_terminal": terminals.get("none", 0),
        "duplicated_events": sum(o.duplicates for o in outcomes),
        "seq_gaps": sum(o.seq_gaps for o in outcomes),
        "restarts": sum(o.restarts for o in outcomes),
        "resets": sum(o.resets for o in outcomes),
        "reconnects": sum(o.reconnects for o in outcomes),
        "longest_stall_s": round(max((o.longest_stall_s for o in outcomes), default=0.0), 2),
    }


def test_the_stack_follows_a_sentinel_failover_under_load(
    sentinel_stack: tuple[Stack, SentinelSetup, int], record: Callable[..., None]
) -> None:
    stack, setup, flower_port = sentinel_stack
    # Given a steady stream of generations, each read by a resuming reader
    load = Load(stack)
    submitter = threading.Thread(target=load.run, daemon=True)
    submitter.start()
    time.sleep(4)  # a fixed wait, the scenario: 4 s of load, generations in flight when the primary dies
    # When the primary crashes mid-load
    killed_at = time.monotonic()
    setup.kill_primary()
    promoted_s = _wait(lambda: setup.master_port() == setup.replica.port, timeout_s=30, what="promotion")

    # Then new generations are accepted and complete on the promoted replica within the bound
    _wait(
        lambda: load.completed_since(killed_at + promoted_s),
        timeout_s=FAILOVER_BOUND_S,
        what="a generation after the failover",
    )
    followed_s = time.monotonic() - killed_at
    time.sleep(4)  # a fixed wait, the scenario: 4 s more of load on the promoted replica, the generations checked below
    load.finish(submitter, readers_within_s=60)
    before = [r.outcome for at, r in load.readers if at < killed_at]
    during = [r.outcome for at, r in load.readers if killed_at <= at]
    refused = Counter(str(code) for at, code in load.refused if at >= killed_at)
    accepted_after = [at for at, _ in load.readers if at > killed_at]
    summary = {
        "promoted_s": round(promoted_s, 2),
        "tokens_again_after_promotion_s": _tokens_again(before, killed_at + promoted_s),
        "followed_s": round(followed_s, 2),
        "first_accepted_after_kill_s": round(min(accepted_after) - killed_at, 2) if accepted_after else None,
        "refused_submissions": dict(refused),
        "started_before_kill": _summary(before),
        "submitted_after_kill": _summary(during),
    }
    print(f"sentinel failover: {summary}")
    record(scenario="sentinel failover under load", **summary)
    # And Flower, through the sentinel broker, still sees the Celery worker
    _wait(
        lambda: any(name.startswith("worker-") and alive for name, alive in _flower_workers(flower_port).items()),
        timeout_s=30,
        what="Flower to list the worker",
    )
    # And every generation submitted after the promotion ended with its exact text
    after_promotion = [r.outcome for at, r in load.readers if at > killed_at + followed_s]
    assert after_promotion and all(o.terminal and o.terminal.event == "done" for o in after_promotion)
    assert all(o.text == PROMPT and o.duplicates == 0 for o in after_promotion)
    # And no reader was left without an answer: each ended (done, restart then done, or an error)
    assert _summary(before + during)["no_terminal"] == 0, summary


def test_what_a_failover_to_a_stale_replica_loses(
    sentinel_stack: tuple[Stack, SentinelSetup, int], record: Callable[..., None]
) -> None:
    """The worst case of asynchronous replication, made on purpose: the replica is paused (SIGSTOP) and cut
    off for 1 s under load, so it misses a second of acknowledged writes, then the primary dies and the stale
    replica is promoted. Counted, not hidden: what readers lost, and that the stack still follows the promotion."""
    stack, setup, _ = sentinel_stack
    # Generations of 4 s, so that some run across the lost second
    load = Load(stack, delay_ms=100)
    submitter = threading.Thread(target=load.run, daemon=True)
    submitter.start()
    time.sleep(3)  # a fixed wait, the scenario: 3 s of load before the replica is cut off
    # Given a replica that stopped receiving writes a second ago (its link dropped by the primary: what the
    # kernel had buffered for it before is all it will ever get)
    assert setup.replica.process is not None
    os.kill(setup.replica.process.pid, signal.SIGSTOP)
    with redis.Redis(host="127.0.0.1", port=setup.primary.port) as primary:
        primary.client_kill_filter(_type="replica")
    time.sleep(1)  # a fixed wait, the scenario: the second of acknowledged writes that the replica misses
    # When the primary dies and the stale replica is promoted
    killed_at = time.monotonic()
    setup.kill_primary()
    os.kill(setup.replica.process.pid, signal.SIGCONT)
    promoted_s = _wait(lambda: setup.master_port() == setup.replica.port, timeout_s=30, what="promotion")

    # Then the stack follows it: new generations complete within the bound
    _wait(
        lambda: load.completed_since(killed_at + promoted_s),
        timeout_s=FAILOVER_BOUND_S,
        what="a generation after the failover",
    )
    followed_s = time.monotonic() - killed_at
    time.sleep(3)  # a fixed wait, the scenario: 3 s more of load on the promoted replica, the generations checked below
    load.finish(submitter, readers_within_s=30)
    paused_at = killed_at - 1
    summary = {
        "promoted_s": round(promoted_s, 2),
        "followed_s": round(followed_s, 2),
        "before_the_pause": _summary([r.outcome for at, r in load.readers if at < paused_at]),
        "accepted_while_the_replica_was_paused": _summary(
            [r.outcome for at, r in load.readers if paused_at <= at < killed_at]
        ),
        "submitted_after_kill": _summary([r.outcome for at, r in load.readers if at >= killed_at]),
    }
    print(f"failover to a stale replica: {summary}")
    record(scenario="sentinel failover to a replica 1 s behind", **summary)
    after = [r.outcome for at, r in load.readers if at > killed_at + followed_s]
    assert after and all(o.terminal and o.terminal.event == "done" and o.text == PROMPT for o in after)

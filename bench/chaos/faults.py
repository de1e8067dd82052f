"""The fault schedule of a chaos run: at random times, a random fault on a random process of the stack.

Faults: SIGKILL of a consumer, a Celery worker or a web process (started again after a moment); a rolling
SIGTERM of every web process, one after the other, as a deploy does; SIGTERM of a consumer or a worker;
SIGSTOP of a process for half to three times DEAD_AFTER_MS (some pauses move its work, some must not), then
SIGCONT; Redis stopped and started again with its AOF on the same port. A fault never takes the last healthy
process of a type, so a peer is always there to take over. A process that exits when no fault touched it is a
finding: counted as a crash and started again.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.support.stack import Stack

logger = logging.getLogger("chaos.faults")

# Kind -> weight. The pause of a web process is rarer: its readers can only notice it by their own timeout.
KINDS = {
    "kill_consumer": 3,
    "kill_worker": 3,
    "kill_web": 2,
    "term_web_rolling": 1,
    "term_consumer": 1,
    "term_worker": 1,
    "pause_consumer": 3,
    "pause_worker": 2,
    "pause_web": 1,
    "restart_redis": 2,
}


@dataclass
class FaultLog:
    injected: Counter[str] = field(default_factory=Counter)
    crashed: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic, kind, target)

    def note(self, kind: str, target: str) -> None:
        self.injected[kind] += 1
        self.timeline.append((time.monotonic(), kind, target))
        logger.info("fault %s on %s", kind, target)


class FaultSchedule(threading.Thread):
    def __init__(self, stack: Stack, rng: random.Random, *, interval_s: float, dead_after_ms: int):
        super().__init__(daemon=True, name="chaos-faults")
        self.stack = stack
        self.rng = rng
        self.interval_s = interval_s
        self.pause_s = (dead_after_ms / 1000 * 0.5, dead_after_ms / 1000 * 3)
        self.log = FaultLog()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.busy: set[str] = set()  # processes (and "redis") a fault is acting on
        self.threads: list[threading.Thread] = []

    def run(self) -> None:
        while not self.stopping.wait(self.rng.expovariate(1 / self.interval_s)):
            self._start_one()
            self._restart_crashed()

    def stop(self) -> None:
        """No new fault; wait for the ones under way to end (every process started again)."""
        self.stopping.set()
        self.join()
        for thread in self.threads:
            thread.join()
        self._restart_crashed()

    # -- choosing ---------------------------------------------------------------------------------

    def _healthy(self, kind: str) -> list[str]:
        return [n for n, k in self.stack.kinds.items() if k == kind and n not in self.busy]

    def _start_one(self) -> None:
        kinds = list(KINDS)
        for kind in self.rng.choices(kinds, weights=[KINDS[k] for k in kinds], k=len(kinds)):
            action, target_kind = kind.split("_", 1)
            with self.lock:
                if action == "restart":
                    if "redis" in self.busy:
                        continue
                    targets = ["redis"]
                elif kind == "term_web_rolling":
                    targets = self._healthy("web")
                    if len(targets) < len(self._names("web")) or len(targets) < 2:
                        continue
                else:
                    healthy = self._healthy(target_kind)
                    if len(healthy) < 2:
                        continue  # the last healthy one of its type stays
                    targets = [self.rng.choice(healthy)]
                self.busy.update(targets)
            thread = threading.Thread(target=self._apply, args=(kind, targets), daemon=True)
            self.threads.append(thread)
            thread.start()
            return

    def _names(self, kind: str) -> list[str]:
        return [n for n, k in self.stack.kinds.items() if k == kind]

    # -- acting -----------------------------------------------------------------------------------

    def _apply(self, kind: str, targets: list[str]) -> None:
        try:
            if kind == "restart_redis":
                self.log.note(kind, "redis")
                self.stack.redis.stop()
                time.sleep(self.rng.uniform(0.5, 3))
                self.stack.redis.start(timeout_s=60)
            elif kind == "term_web_rolling":
                self.log.note(kind, ",".join(targets))
                for name in targets:
                    self._terminate(name)
                    self._wait_web(name)
            elif kind.startswith("kill_"):
                [name] = targets
                self.log.note(kind, name)
                self.stack.signal(name, signal.SIGKILL)
                self.stack.wait_stopped(name, 30)
                time.sleep(self.rng.uniform(0.5, 3))
                self.stack.restart(name)
                self._wait_web(name)
            elif kind.startswith("term_"):
                [name] = targets
                self.log.note(kind, name)
                self._terminate(name)
            else:
                [name] = targets
                self.log.note(kind, name)
                self.stack.signal(name, signal.SIGSTOP)
                time.sleep(self.rng.uniform(*self.pause_s))
                self.stack.signal(name, signal.SIGCONT)
        except Exception:
            logger.exception("fault %s on %s failed", kind, targets)
            self.log.crashed[f"harness:{kind}"] += 1
        finally:
            with self.lock:
                self.busy.difference_update(targets)

    def _terminate(self, name: str) -> None:
        """SIGTERM, as a deploy does: the process stops by itself; then a new one takes its place."""
        self.stack.signal(name, signal.SIGTERM)
        try:
            self.stack.wait_stopped(name, 60)
        except TimeoutError:
            self.log.crashed[f"slow_stop:{name}"] += 1
            self.stack.signal(name, signal.SIGKILL)
            self.stack.wait_stopped(name, 30)
        self.stack.restart(name)

    def _wait_web(self, name: str) -> None:
        """A web process answers again (a deploy waits for that before it stops the next one)."""
        if name not in self.stack.ports:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.stack.ports[name]}/healthz", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)

    def _restart_crashed(self) -> None:
        with self.lock:
            for name, process in list(self.stack.processes.items()):
                if name in self.busy or process.poll() is None:
                    continue
                self.log.crashed[name] += 1
                logger.error("%s exited with %s while no fault touched it; started again", name, process.returncode)
                self.stack.restart(name)

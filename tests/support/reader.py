"""A reader that behaves like a careful EventSource client: it resumes after any disconnect, honours
``restart`` and ``reset``, and records everything a user would notice (text, gaps, duplicates, stalls)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.sse import TERMINAL, SseEvent, iter_sse


@dataclass
class ReadOutcome:
    text: str = ""
    terminal: SseEvent | None = None
    events: list[SseEvent] = field(default_factory=list)
    duplicates: int = 0
    seq_gaps: int = 0
    reconnects: int = 0
    restarts: int = 0
    resets: int = 0
    arrivals: list[float] = field(default_factory=list)

    @property
    def longest_stall_s(self) -> float:
        """Longest time between two consecutive events: how long readers waited during a fault."""
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]
        return max(gaps, default=0.0)


class ResumingReader(threading.Thread):
    def __init__(
        self, base_urls: list[str], generation: dict[str, Any], headers: dict[str, str], *, timeout_s: float = 90
    ):
        super().__init__(daemon=True)
        self.base_urls = base_urls
        self.generation = generation
        self.headers = headers
        self.timeout_s = timeout_s
        self.outcome = ReadOutcome()
        self._seen: set[str] = set()
        self._last_id: str | None = None
        self._expected_seq = 0

    def run(self) -> None:
        out = self.outcome
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while out.terminal is None and time.monotonic() < deadline:
            base = self.base_urls[attempt % len(self.base_urls)]
            attempt += 1
            headers = dict(self.headers)
            if self._last_id is not None:
                headers["Last-Event-ID"] = self._last_id
            try:
                with (
                    httpx.Client(timeout=httpx.Timeout(10.0, read=20.0)) as client,
                    client.stream("GET", base + self.generation["events_url"], headers=headers) as response,
                ):
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        response.read()
                        raise httpx.HTTPError(f"status {response.status_code}")
                    for event in iter_sse(response.iter_bytes()):
                        self._take(event)
                        if out.terminal is not None:
                            return
            except (httpx.HTTPError, OSError):
                pass
            out.reconnects += 1
            time.sleep(0.2)

    def _take(self, event: SseEvent) -> None:
        """Apply one event as a careful client would, noting a duplicate, a gap, a restart or a reset."""
        out = self.outcome
        out.arrivals.append(time.monotonic())
        out.events.append(event)
        if event.id in self._seen and event.event != "reset":
            out.duplicates += 1
            return
        self._seen.add(event.id)
        self._last_id = event.id
        if event.event == "reset":
            out.resets += 1
            out.text = event.data["text"]
            self._expected_seq = event.data["next_seq"]
            return
        if event.data.get("seq") != self._expected_seq:
            out.seq_gaps += 1
        self._expected_seq = event.data.get("seq", self._expected_seq) + 1
        if event.event == "token":
            out.text += event.data["content"]
        elif event.event == "restart":
            out.restarts += 1
            out.text = ""
        elif event.event in TERMINAL:
            out.terminal = event


def read_all(readers: list[ResumingReader], timeout_s: float = 120) -> list[ReadOutcome]:
    for reader in readers:
        if reader.ident is None:
            reader.start()
    for reader in readers:
        reader.join(timeout_s)
    return [reader.outcome for reader in readers]

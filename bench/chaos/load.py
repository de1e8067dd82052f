"""The load of a chaos run: users that submit generations and read them the way clients do.

Each user keeps one generation running at a time, in a session it keeps for a few generations. A generation is
an ``echo`` (its text is known: the prompt) or is fed by an external producer (the test's own tokens). It is
read over SSE or WebSocket, sometimes by two readers at once; readers drop their connection at random and
resume after the last id they received; some generations are cancelled; some sessions are followed by a
session reader. Every reader records what a user would notice: text, duplicates, gaps, stalls.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.chaos.config import Config
from bench.chaos.wire import EndedError, RefusedError, WebSocket, WireEvent, sse_events, ws_events
from tasks.providers.builtin import split_words

TERMINAL = {"done", "error", "cancelled"}
VOCABULARY = [
    *(f"word{i}" for i in range(50)),
    "naïve",
    "café",
    "日本語",
    "😀",
    "a,b",
    '"quoted"',
    "back\\slash",
    "tab\tin",
    "<tag>",
    "end.",
]
# Whatever a transport error looks like to a reader: it reconnects and resumes.
READ_ERRORS = (OSError, TimeoutError, EndedError, asyncio.IncompleteReadError, ValueError, UnicodeDecodeError)


@dataclass
class Reading:
    """What one reader of one generation received."""

    transport: str
    text: str = ""
    terminal: WireEvent | None = None
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, event, id) applied, in order
    duplicates: int = 0
    gaps: int = 0
    reconnects: int = 0
    drops: int = 0
    restarts: int = 0
    resets: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    ended_without_terminal: int = 0
    longest_stall_s: float = 0.0
    hung: bool = False
    # Where a reader that never got its terminal was: the port of the stream it had open (0: none), since when.
    open_port: int = 0
    opened_at: float = 0.0
    last_event_at: float = 0.0
    connects: int = 0
    sockets: list[WebSocket] = field(default_factory=list, repr=False)  # the open WebSocket, to cancel on


@dataclass
class Generation:
    id: str
    session_id: str
    model: str
    expected: str
    finish_reason: str
    created_at: float
    expected_end: float
    cancel_requested: bool = False
    error_requested: str | None = None
    readings: list[Reading] = field(default_factory=list)


@dataclass
class SessionWatch:
    """A reader of a session's stream: every event of every generation in it, once."""

    id: str
    generations: list[str] = field(default_factory=list)
    closed: bool = False
    deadline: float = 0.0
    events: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)  # gid -> (seq, event, entry_id)
    terminals: set[str] = field(default_factory=set)
    duplicates: int = 0
    reconnects: int = 0
    hung: bool = False

    def finished(self) -> bool:
        """No generation will join it any more, and each of its generations has ended on it."""
        return self.closed and self.terminals >= set(self.generations)


@dataclass
class LoadResult:
    generations: list[Generation] = field(default_factory=list)
    sessions: list[SessionWatch] = field(default_factory=list)
    submit_failed: int = 0
    producer_problems: Counter[str] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)
    # Between two events of one reader (a reconnect included): (seconds, generation, the event that ended it).
    longest_stall: tuple[float, str, str] = (0.0, "", "")
    # From a reader's start to its first event: the queue wait, a lost task sent again, a worker restarted.
    longest_first_wait: tuple[float, str, str] = (0.0, "", "")


class Load:
    def __init__(self, config: Config, rng: random.Random, ports: list[int], api_key: str) -> None:
        self.config = config
        self.rng = rng
        self.ports = ports
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.result = LoadResult()
        self.stop_at = 0.0
        self.http: httpx.AsyncClient | None = None
        self._session_tasks: list[asyncio.Task[None]] = []
        # Where ``run`` is, told when the drain times out.
        self.stage = "running the users"
        self._users: list[asyncio.Task[None]] = []

    def unfinished(self) -> list[str]:
        """What the run still waits for (told when the drain times out): users, and session readers with the
        generations whose end they have not seen."""
        waiting = [
            f"{self.stage}: {sum(1 for task in self._users if not task.done())} users still in a generation, "
            f"{sum(1 for task in self._session_tasks if not task.done())} session readers still reading"
        ]
        for watch in self.result.sessions:
            if not watch.finished():
                missing = sorted(set(watch.generations) - watch.terminals)
                waiting.append(
                    f"session {watch.id}: closed {watch.closed}, no end seen of {missing}, "
                    f"{watch.reconnects} reconnects, hung {watch.hung}"
                )
        return waiting

    # -- the run ------------------------------------------------------------------------------------

    async def run(self, duration_s: float) -> LoadResult:
        self.stop_at = time.monotonic() + duration_s
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
        async with httpx.AsyncClient(headers=self.headers, timeout=10, limits=limits) as self.http:
            self._users = [asyncio.create_task(self._user(n)) for n in range(self.config.concurrency)]
            await asyncio.gather(*self._users)
            self.stage = "waiting for the session readers"
            await asyncio.gather(*self._session_tasks)
            self.stage = "closing the HTTP client"
        self.stage = "done"
        return self.result

    async def _user(self, number: int) -> None:
        # Users start over the first seconds, not all in the same instant.
        await asyncio.sleep(self.rng.uniform(0, min(10.0, self.config.duration_s / 4)))
        rounds = 0
        while time.monotonic() < self.stop_at:
            watch = None
            if self.rng.random() < self.config.session_share:
                watch = SessionWatch(f"chaos-{self.config.seed}-{number}-{rounds}")
                self.result.sessions.append(watch)
            session_id = watch.id if watch else f"chaos-{self.config.seed}-{number}-{rounds}"
            rounds += 1
            for _ in range(self.rng.randint(1, 5)):
                if time.monotonic() >= self.stop_at:
                    break
                await self._one_generation(session_id, watch)
                await asyncio.sleep(self.rng.uniform(0, 1))
            if watch is not None:
                watch.closed = True

    # -- HTTP with retries: a client rides out a web process that died and Redis restarting ----------

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.rng.choice(self.ports)}{path}"

    async def request(
        self, path: str, body: Any, *, ok: set[int], headers: dict[str, str] | None = None, give_up_s: float = 120
    ) -> httpx.Response | None:
        assert self.http is not None
        deadline = time.monotonic() + give_up_s
        while time.monotonic() < deadline:
            try:
                response = await self.http.post(self._url(path), json=body, headers=headers)
                if response.status_code in ok:
                    return response
                # 409 idempotency_key_in_use: an earlier try may still be storing this generation; ask again.
                in_use = response.status_code == 409 and "idempotency_key_in_use" in response.text
                if response.status_code < 500 and response.status_code != 429 and not in_use:
                    return response
            except httpx.HTTPError:
                pass
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
        return None

    # -- one generation --------------------------------------------------------------------------------

    def _prompt(self, words: int) -> str:
        parts = []
        for i in range(words):
            parts.append(self.rng.choice(VOCABULARY))
            if i < words - 1:
                parts.append(self.rng.choice([" ", " ", " ", " ", "  ", "\n", " \n\n"]))
        return "".join(parts)

    async def _one_generation(self, session_id: str, watch: SessionWatch | None) -> None:
        c, rng = self.config, self.rng
        words = self._prompt(rng.randint(c.words_min, c.words_max))
        tokens = split_words(words)
        delay_ms = rng.randint(c.delay_ms_min, c.delay_ms_max)
        external = rng.random() < c.external_share
        finish_reason = "stop"
        if external:
            body: dict[str, Any] = {"model": "external", "prompt": "fed by a producer", "session_id": session_id}
        else:
            body = {"model": "echo", "prompt": words, "session_id": session_id, "options": {"delay_ms": delay_ms}}
            if rng.random() < 0.15:
                body["max_tokens"] = rng.randint(1, len(tokens) - 1)
                tokens, finish_reason = tokens[: body["max_tokens"]], "length"
        # The same Idempotency-Key on every try: a POST retried after its answer was lost creates nothing twice.
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        response = await self.request("/v1/generations", body, ok={202}, headers=headers)
        if response is None or response.status_code != 202:
            self.result.submit_failed += 1
            return
        created = time.monotonic()
        gen = Generation(
            id=response.json()["id"],
            session_id=session_id,
            model=body["model"],
            expected="".join(tokens),
            finish_reason=finish_reason,
            created_at=created,
            expected_end=created + len(tokens) * delay_ms / 1000,
        )
        self.result.generations.append(gen)
        if watch is not None:
            self._watch(watch, gen)
        jobs = [self._read(gen, self._new_reading())]
        if rng.random() < c.second_reader_share:
            jobs.append(self._read(gen, self._new_reading()))
        if rng.random() < c.cancel_share:
            gen.cancel_requested = True
            jobs.append(self._cancel(gen, delay_ms * len(tokens) / 1000))
        if external:
            if rng.random() < 0.1:
                gen.error_requested = "upstream_down"
            jobs.append(self._produce(gen, tokens, delay_ms))
        await asyncio.gather(*jobs)

    def _new_reading(self) -> Reading:
        return Reading("ws" if self.rng.random() < self.config.ws_share else "sse")

    async def _cancel(self, gen: Generation, duration_s: float) -> None:
        await asyncio.sleep(self.rng.uniform(0.2, max(0.3, duration_s)))
        # Over a reader's WebSocket when one is open, otherwise with the route.
        for reading in gen.readings:
            sockets = reading.sockets
            if sockets and self.rng.random() < 0.5:
                try:
                    sockets[0].send_text('{"type": "cancel"}')
                    return
                except (OSError, RuntimeError, AttributeError):
                    break
        await self.request(f"/v1/generations/{gen.id}/cancel", None, ok={202, 409})

    async def _produce(self, gen: Generation, tokens: list[str], delay_ms: int) -> None:
        """An external producer: batches of a few tokens, now and then one sent twice, then the end."""
        index = 0
        while index < len(tokens):
            size = self.rng.randint(1, 4)
            batch = {"index": index, "tokens": tokens[index : index + size]}
            for _ in range(2 if self.rng.random() < 0.1 else 1):
                response = await self.request(f"/v1/generations/{gen.id}/tokens", batch, ok={202})
                if response is None:
                    self.result.producer_problems["gave_up"] += 1
                    return
                if response.status_code == 409:
                    error = response.json()["error"]
                    if error["code"] != "index_gap":
                        return  # ended (cancelled, or timed out)
                    self.result.producer_problems["index_gap"] += 1
                    index = error["details"]["expected_index"]
                    break
                index = response.json()["next_index"]
            await asyncio.sleep(delay_ms * size / 1000)
        end: dict[str, Any] = {"finish_reason": "stop"}
        if gen.error_requested:
            end = {"error": {"code": gen.error_requested, "message": "the upstream model went away"}}
        if await self.request(f"/v1/generations/{gen.id}/complete", end, ok={202, 409}) is None:
            self.result.producer_problems["gave_up"] += 1

    # -- readers ----------------------------------------------------------------------------------

    async def _read(self, gen: Generation, reading: Reading) -> None:
        gen.readings.append(reading)
        c, rng = self.config, self.rng
        drops = sorted(rng.sample(range(1, 200), rng.randint(1, 3))) if rng.random() < c.drop_share else []
        state = _Cursor()
        deadline = gen.expected_end + c.hang_s
        while reading.terminal is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reading.hung = True
                break
            await self._read_once(gen, reading, state, drops, remaining)
            if reading.hung:
                break
            if reading.terminal is None:
                reading.open_port = 0
                await asyncio.sleep(rng.uniform(0.05, 1.0))

    async def _read_once(
        self, gen: Generation, reading: Reading, state: _Cursor, drops: list[int], remaining: float
    ) -> None:
        """One request of a reader: read until its terminal, a planned drop, the stream's end or an error."""
        stream = self._open(gen, reading, state)
        deadline_timer = asyncio.timeout(remaining)
        try:
            async with deadline_timer, aclosing(stream):
                await self._consume(gen, reading, state, drops, stream)
        except RefusedError as exc:
            reading.refused[exc.status] += 1
        except READ_ERRORS:
            if deadline_timer.expired():
                # Still open at its deadline (a stream that only sends keep-alives ends here too): hung,
                # not resumed, which would hide a web process that stopped delivering.
                reading.hung = True
                return
            reading.reconnects += 1
        except Exception as exc:  # a flaw of this client, not of the server: counted, and the reader resumes
            reading.reconnects += 1
            self.result.client_errors[type(exc).__name__] += 1

    def _open(self, gen: Generation, reading: Reading, state: _Cursor) -> AsyncGenerator[WireEvent, None]:
        """A request for the reader's stream after its last event, on a web process picked at random."""
        rng = self.rng
        port = rng.choice(self.ports)
        path = f"/v1/generations/{gen.id}/{'ws' if reading.transport == 'ws' else 'events'}"
        stream: AsyncGenerator[WireEvent, None]
        if reading.transport == "ws":
            stream = ws_events(
                "127.0.0.1", port, path, self.headers, last_id=state.last_id, idle_s=35, sink=reading.sockets
            )
        else:
            cursor_in_query = rng.random() < 0.3
            stream = sse_events(
                "127.0.0.1", port, path, self.headers, last_id=state.last_id, cursor_in_query=cursor_in_query,
                idle_s=10,
            )  # fmt: skip
        reading.open_port, reading.opened_at = port, time.monotonic()
        reading.connects += 1
        return stream

    async def _consume(
        self,
        gen: Generation,
        reading: Reading,
        state: _Cursor,
        drops: list[int],
        stream: AsyncGenerator[WireEvent, None],
    ) -> None:
        async for event in stream:
            now = time.monotonic()
            reading.last_event_at = now
            self._stall(reading, now - state.last_arrival, gen.id, event.event, first=state.count == 0)
            state.last_arrival = now
            state.apply(reading, event)
            if reading.terminal is not None:
                return
            if drops and state.count >= drops[0]:
                drops.pop(0)
                reading.drops += 1
                return
        reading.ended_without_terminal += 1

    def _stall(self, reading: Reading, stall_s: float, gid: str, event: str, *, first: bool) -> None:
        if first:
            if stall_s > self.result.longest_first_wait[0]:
                self.result.longest_first_wait = (stall_s, gid, event)
            return
        reading.longest_stall_s = max(reading.longest_stall_s, stall_s)
        if stall_s > self.result.longest_stall[0]:
            self.result.longest_stall = (stall_s, gid, event)

    def _watch(self, watch: SessionWatch, gen: Generation) -> None:
        watch.generations.append(gen.id)
        watch.deadline = max(watch.deadline, gen.expected_end + self.config.hang_s)
        if len(watch.generations) == 1:
            self._session_tasks.append(asyncio.create_task(self._read_session(watch)))

    async def _read_session(self, watch: SessionWatch) -> None:
        """Follow a session's stream (SSE, resumed after drops) until every generation of it has ended."""
        rng = self.rng
        cursor = _SessionCursor()
        if rng.random() < self.config.drop_share:
            cursor.drops = sorted(rng.sample(range(1, 400), rng.randint(1, 4)))
        while not watch.finished():
            stream = sse_events(
                "127.0.0.1", rng.choice(self.ports), f"/v1/sessions/{watch.id}/events", self.headers,
                last_id=cursor.last_id, cursor_in_query=False, idle_s=10,
            )  # fmt: skip
            await self._session_request(watch, asyncio.create_task(cursor.pump(watch, stream)))
            if watch.hung:
                return
            if not watch.finished():
                await asyncio.sleep(rng.uniform(0.05, 1.0))

    async def _session_request(self, watch: SessionWatch, task: asyncio.Task[None]) -> None:
        # The stream never ends by itself: whether the reader is done is checked while it waits.
        while not task.done() and not watch.finished():
            if watch.closed and time.monotonic() > watch.deadline:
                watch.hung = True
                break
            await asyncio.wait({task}, timeout=0.5)
        # Python 3.11's ``wait_for`` can swallow a cancel that lands as its read completes, and a session stream
        # never ends by itself: cancel until the reader has stopped (a single cancel left 8 readers of a 300 s run
        # reading through the whole drain).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        try:
            await task
        except (*READ_ERRORS, RefusedError, asyncio.CancelledError):
            watch.reconnects += 1
        except Exception as exc:
            watch.reconnects += 1
            self.result.client_errors[type(exc).__name__] += 1


@dataclass
class _SessionCursor:
    """Where a session reader is: the last id it received, the ids it has, and when it drops its connection."""

    last_id: str | None = None
    seen: set[str] = field(default_factory=set)
    count: int = 0
    drops: list[int] = field(default_factory=list)

    async def pump(self, watch: SessionWatch, stream: AsyncGenerator[WireEvent, None]) -> None:
        async with aclosing(stream):
            async for event in stream:
                self.count += 1
                if event.id in self.seen:
                    watch.duplicates += 1
                    continue
                self.seen.add(event.id)
                self.last_id = event.id
                gid = event.data.get("generation_id", "")
                watch.events.setdefault(gid, []).append(
                    (event.data.get("seq", -1), event.event, event.data.get("content", ""))
                )
                if event.event in TERMINAL:
                    watch.terminals.add(gid)
                if self.drops and self.count >= self.drops[0]:
                    self.drops.pop(0)
                    return


@dataclass
class _Cursor:
    """Where a reader is: the last id it received, the seq it expects next, the ids it has."""

    last_id: str | None = None
    expected_seq: int = 0
    count: int = 0
    seen: set[str] = field(default_factory=set)
    last_arrival: float = field(default_factory=time.monotonic)

    def apply(self, reading: Reading, event: WireEvent) -> None:
        self.count += 1
        if event.id in self.seen and event.event != "reset":
            reading.duplicates += 1
            return
        self.seen.add(event.id)
        self.last_id = event.id
        data = event.data
        if event.event == "reset":
            reading.resets += 1
            reading.text = data["text"]
            self.expected_seq = data["next_seq"]
            return
        seq = data.get("seq")
        if not isinstance(seq, int):
            return
        if seq < self.expected_seq:
            reading.duplicates += 1
            return
        if seq > self.expected_seq:
            reading.gaps += seq - self.expected_seq
        self.expected_seq = seq + 1
        reading.events.append((seq, event.event, event.id))
        if event.event == "token":
            reading.text += data["content"]
        elif event.event == "restart":
            reading.restarts += 1
            reading.text = ""
        elif event.event in TERMINAL:
            reading.terminal = event

"""Which parts of ``make bench`` run, and how big each is (from the environment; see ``bench/__main__.py``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# The load levels against Flask-SSE (with the unloaded first token, the long answer and the idle connections),
# then the costs: per generation, a burst of submissions, WebSocket vs SSE, Redis memory, upstream connections,
# and tracing's.
PARTS = ("latency", "generations", "burst", "ws", "memory", "upstream", "tracing")


@dataclass(frozen=True)
class Plan:
    parts: frozenset[str] = frozenset(PARTS)
    generations: int = 300
    burst: int = 1000
    ws_readers: int = 150
    ws_tokens: int = 100
    memory_answers: int = 500
    memory_tokens: int = 200
    memory_sessions: int = 100
    resume_window_s: float = 5.0
    upstream_generations: int = 50
    tracing_streams: int = 300
    tracing_tokens: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Plan:
        only = [part.strip() for part in env.get("BENCH_ONLY", "").split(",") if part.strip()]
        unknown = sorted(set(only) - set(PARTS))
        if unknown:
            raise SystemExit(f"BENCH_ONLY: unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
        return cls(
            parts=frozenset(only or PARTS),
            generations=int(env.get("BENCH_GENERATIONS", cls.generations)),
            burst=int(env.get("BENCH_BURST", cls.burst)),
            ws_readers=int(env.get("BENCH_WS_READERS", cls.ws_readers)),
            ws_tokens=int(env.get("BENCH_WS_TOKENS", cls.ws_tokens)),
            memory_answers=int(env.get("BENCH_MEMORY_ANSWERS", cls.memory_answers)),
            memory_tokens=int(env.get("BENCH_MEMORY_TOKENS", cls.memory_tokens)),
            memory_sessions=int(env.get("BENCH_MEMORY_SESSIONS", cls.memory_sessions)),
            resume_window_s=float(env.get("BENCH_RESUME_WINDOW_S", cls.resume_window_s)),
            upstream_generations=int(env.get("BENCH_UPSTREAM_GENERATIONS", cls.upstream_generations)),
            tracing_streams=int(env.get("BENCH_TRACING_STREAMS", cls.tracing_streams)),
            tracing_tokens=int(env.get("BENCH_TRACING_TOKENS", cls.tracing_tokens)),
        )

    def wants(self, part: str) -> bool:
        """Whether ``part`` runs: named by BENCH_ONLY (or no BENCH_ONLY), and not sized 0."""
        size = {
            "generations": self.generations,
            "burst": self.burst,
            "ws": self.ws_readers,
            "memory": self.memory_answers,
            "upstream": self.upstream_generations,
            "tracing": self.tracing_streams,
        }.get(part, 1)
        return part in self.parts and size > 0

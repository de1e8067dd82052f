"""Processors used by fault-injection tests (loaded by the consumer through the PROCESSORS setting)."""

from __future__ import annotations

import redis

from bridge.events import Event
from workers.processors import GenerationState, Processor


class PoisonOnMarker(Processor):
    """A critical processor (think moderation) that always fails on a token containing 'POISON'."""

    name = "poison-on-marker"
    critical = True

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        if "POISON" in event.data.get("content", ""):
            raise RuntimeError("cannot moderate this token")
        return event

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


class FixablePoison(PoisonOnMarker):
    """Fails on 'POISON' until the key ``FIXED_KEY`` exists: a moderation backend that an operator repairs."""

    name = "fixable-poison"
    FIXED_KEY = "tokenbridge-test:moderation-fixed"

    def process(self, gen: GenerationState, event: Event) -> Event | None:
        if "POISON" in event.data.get("content", "") and not self.client.exists(self.FIXED_KEY):
            raise RuntimeError("moderation backend is down")
        return event

"""Reading many streams at once on a Redis Cluster.

On a single Redis, one ``XREAD BLOCK`` (or ``XREADGROUP BLOCK``) waits on every watched key at once. A
cluster refuses that: the keys of one command must share a slot, and each generation has its own. So every
write to a stream also publishes the stream's key as a pub/sub channel (``bridge.scripts``; a plain PUBLISH
reaches subscribers on every node), and a reader here:

1. subscribes to the channels of the keys it watches, on one connection to one node, before reading them;
2. waits for a hint (or its block time), and
3. reads the hinted keys without blocking, in one pipeline, which the cluster client sends node by node.

A hint is only a wake-up: what is read is always the stream itself, from the reader's own position, so a
lost hint delays entries and never loses one. Newly watched keys are read at once, and every key is read
again every ``sweep_s`` and after the subscription connection was lost: that bounds the delay of a hint
lost on the cluster bus.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import redis
from redis.client import PubSub

logger = logging.getLogger(__name__)

Reply = list[tuple[str, list[tuple[str, dict[str, str]]]]]

# How long one wait on the subscription lasts before the reader looks at its wake-up flag again.
_SLICE_S = 0.05
# Hints taken in one go before reading: a flood of them must not starve the reads.
_MAX_HINTS = 10_000


class NotifiedReader:
    """``XREAD``/``XREADGROUP`` over keys of any slots, woken by the writers' hints. One thread uses it."""

    def __init__(self, client: Any, *, sweep_s: float = 5.0) -> None:
        self.client = client  # a RedisCluster
        self.sweep_s = sweep_s
        self._pubsub: PubSub | None = None
        self._subscribed: set[str] = set()
        self._hinted: set[str] = set()
        self._next_sweep = 0.0
        # Hints received, and reads they caused (for tests and metrics).
        self.hints = 0

    def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
        self._pubsub = None
        self._subscribed = set()

    def read(
        self,
        streams: dict[str, str],
        *,
        count: int,
        block_ms: int,
        group: tuple[str, str] | None = None,
        interrupt: threading.Event | None = None,
    ) -> Reply:
        """Entries after each key's id, like ``XREAD``, waiting up to ``block_ms`` when there is nothing.

        With ``group`` (group, consumer) this is ``XREADGROUP``: a key whose id is not ``>`` re-reads the
        consumer's pending entries and is always read, and answered even when empty, as ``XREADGROUP`` does.
        The wait ends early when ``interrupt`` is set (another thread watches a new key).
        """
        try:
            self._subscribe(set(streams))
            now = time.monotonic()
            if now >= self._next_sweep:
                self._hinted.update(streams)
                self._next_sweep = now + self.sweep_s
            if group is not None:
                self._hinted.update(key for key, position in streams.items() if position != ">")
            if not self._hinted.intersection(streams):
                self._wait(streams, now + block_ms / 1000, interrupt)
            self._take_hints(0.0)
        except (redis.ConnectionError, redis.TimeoutError):
            # Hints may have been lost with the connection: read everything once it is back.
            self.close()
            self._next_sweep = 0.0
            raise
        due = [key for key in streams if key in self._hinted]
        if not due:
            return []
        self._hinted.difference_update(due)
        pipe = self.client.pipeline(transaction=False)
        for key in due:
            if group is None:
                pipe.xread({key: streams[key]}, count=count)
            else:
                pipe.xreadgroup(group[0], group[1], {key: streams[key]}, count=count)
        results = pipe.execute(raise_on_error=False)
        reply: Reply = []
        failure: Exception | None = None
        for key, result in zip(due, results, strict=True):
            if isinstance(result, Exception):
                self._hinted.add(key)  # read it again next time
                failure = failure or result
                continue
            entries = result[0][1] if result else []
            if len(entries) >= count:
                self._hinted.add(key)  # more may wait behind this page
            if entries or (group is not None and streams[key] != ">"):
                reply.append((key, entries))
        if failure is not None and not reply:
            raise failure
        return reply

    def _subscribe(self, keys: set[str]) -> None:
        if self._pubsub is None:
            node = self.client.get_random_node()
            self._pubsub = self.client.get_redis_connection(node).pubsub(ignore_subscribe_messages=True)
            self._subscribed = set()
        new = keys - self._subscribed
        gone = self._subscribed - keys
        if new:
            # Subscribed before read: a write after this moment sends a hint, one before it is read now.
            self._pubsub.subscribe(*new)
            self._subscribed |= new
            self._hinted |= new
        if gone:
            self._pubsub.unsubscribe(*gone)
            self._subscribed -= gone
            self._hinted -= gone

    def _wait(self, streams: dict[str, str], deadline: float, interrupt: threading.Event | None) -> None:
        while interrupt is None or not interrupt.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._take_hints(min(remaining, _SLICE_S)) and self._hinted.intersection(streams):
                return

    def _take_hints(self, timeout_s: float) -> int:
        """Collect hints, waiting up to ``timeout_s`` for the first one. Returns how many came."""
        assert self._pubsub is not None
        taken = 0
        while taken < _MAX_HINTS:
            message = self._pubsub.get_message(timeout=timeout_s if taken == 0 else 0.0)
            if message is None:
                break
            if message.get("type") == "message":
                self._hinted.add(message["channel"])
                taken += 1
        self.hints += taken
        return taken

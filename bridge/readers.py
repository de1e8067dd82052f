"""The stream reader: what the hub and the consumer read many streams with, whatever Redis they talk to.

``stream_reader`` chooses the implementation once; callers only ever see ``StreamReader``. Both a single
Redis and a cluster get the reader woken by the writers' hints (``bridge.cluster.NotifiedReader``): one
``XREAD BLOCK`` over every watched key costs, at every read, the number of keys watched, and a cluster
refuses it anyway (the keys of one command must share a slot).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

Reply = list[tuple[str, list[tuple[str, dict[str, str]]]]]


class StreamReader(ABC):
    """``XREAD``/``XREADGROUP`` over many streams, waiting when there is nothing. One thread uses it."""

    @abstractmethod
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

    @abstractmethod
    def wake(self) -> None:
        """End a waiting ``read`` at once (from another thread: it watches a new key)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection of this reader; it cannot be used afterwards."""


def stream_reader(client: Any, *, sweep_s: float, hints: str) -> StreamReader:
    """The reader for ``client`` (a Redis or a RedisCluster); every key is read again at least every ``sweep_s``.

    ``hints``: on a single Redis, the channel whose messages name the streams written (``keys.RAW_HINTS`` for the
    consumers, ``keys.OUT_HINTS`` for the web).
    """
    from bridge.cluster import NotifiedReader  # it implements this module's interface

    return NotifiedReader(client, sweep_s=sweep_s, hints=hints)

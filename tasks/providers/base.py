"""The provider interface that every model source implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator

from bridge.generation import GenerationRequest
from bridge.producer import Chunk, Scheduled


class Provider(ABC):
    """Streams the answer to one request: yields token strings, then optionally one ``Finish``.

    ``stop`` is set when the generation is cancelled or fenced off: a provider checks it between tokens
    and uses ``stop.wait`` instead of ``time.sleep`` so that it stops at once.
    """

    @abstractmethod
    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]: ...

    def schedule(self, request: GenerationRequest) -> Scheduled | None:
        """The whole answer with the time each chunk is due, when nothing but the clock paces it: the worker's write
        loop then produces it without a thread of its own. None (the default): the answer comes from ``stream``."""
        return None

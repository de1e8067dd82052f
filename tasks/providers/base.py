"""The provider interface that every model source implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator

from bridge.generation import GenerationRequest
from bridge.producer import Chunk


class Provider(ABC):
    """Streams the answer to one request: yields token strings, then optionally one ``Finish``.

    ``stop`` is set when the generation is cancelled or fenced off: a provider checks it between tokens
    and uses ``stop.wait`` instead of ``time.sleep`` so that it stops at once.
    """

    @abstractmethod
    def stream(self, request: GenerationRequest, stop: threading.Event) -> Iterator[Chunk]: ...

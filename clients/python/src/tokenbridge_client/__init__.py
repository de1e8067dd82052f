"""The tokenbridge Python client, on its own: httpx and orjson, none of the server's dependencies.

```python
from tokenbridge_client import TokenbridgeClient, collect_text

with TokenbridgeClient("http://127.0.0.1:8000", api_key) as client:
    generation = client.submit("echo", "Hello there")
    print(collect_text(client.stream(generation)))
```

``AsyncTokenbridgeClient`` is the same API on ``httpx.AsyncClient``, for FastAPI and other async code.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from ._errors import TokenbridgeError
from .async_client import AsyncTokenbridgeClient, acollect_text
from .client import (
    Event,
    SseEventTooLarge,
    SseMessage,
    SseParser,
    TokenbridgeAPIError,
    TokenbridgeClient,
    TokenbridgeClientError,
    TokenbridgeConnectionError,
    TokenbridgeProtocolError,
    Transcript,
    collect_text,
)

try:
    # Written once, in clients/python/pyproject.toml (which follows the server's: docs/releases.md).
    __version__ = _version("tokenbridge-client")
except PackageNotFoundError:  # imported from a checkout, not installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncTokenbridgeClient",
    "Event",
    "SseEventTooLarge",
    "SseMessage",
    "SseParser",
    "TokenbridgeAPIError",
    "TokenbridgeClient",
    "TokenbridgeClientError",
    "TokenbridgeConnectionError",
    "TokenbridgeError",
    "TokenbridgeProtocolError",
    "Transcript",
    "acollect_text",
    "collect_text",
]

"""Server-sent events as an upstream LLM API sends them: the client library's parser (the WHATWG rules), with a
size cap and a lenient end.

One parser for every SSE this project reads: an upstream's here, tokenbridge's own in the Python client, the
benchmark's and the tests' readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenbridge_client import SseEventTooLarge, SseParser
from tokenbridge_client import SseMessage as ServerSentEvent

from bridge.errors import ProviderError

# A longer SSE line or event is a broken upstream, not a token.
MAX_EVENT_BYTES = 1 << 20

__all__ = ["MAX_EVENT_BYTES", "ServerSentEvent", "iter_events"]


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Parse server-sent events from network chunks, which may split a line (or a ``\\r\\n``) anywhere. Lenient at
    the end: a last line or event without its terminator still counts."""
    parser = SseParser(max_event_bytes=MAX_EVENT_BYTES)
    try:
        for chunk in chunks:
            yield from parser.feed(chunk)
        yield from parser.finish()
    except SseEventTooLarge as exc:
        raise ProviderError(f"the upstream sent an oversized event ({exc})", code="provider_error") from None

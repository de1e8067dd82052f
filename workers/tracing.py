"""Tracing of a consumer worker (when ``bridge.tracing`` is configured): one span per generation it processes.

The span joins the trace of the POST that made the generation (its ``:meta`` ``trace``): it begins when this
consumer takes the generation and ends when the generation's end is committed (or it lets the generation go).
Nothing per token or per commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge import tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

# The spans of the generations this process is processing, by generation id.
_spans: dict[str, Span] = {}


def taken(generation_id: str, meta: dict[str, str], *, taken_over: bool) -> None:
    """This consumer owns the generation now (``meta``: its ``:meta`` as read to take it)."""
    if not tracing.enabled() or generation_id in _spans:
        return
    span = tracing.start_span(
        "tokenbridge.process",
        meta.get(tracing.META_FIELD, ""),
        generation_id=generation_id,
        model=meta.get("model"),
        taken_over=taken_over,
    )
    if span is not None:
        _spans[generation_id] = span


def ended(generation_id: str, event: str, events: int) -> None:
    """Its terminal event (``event``, the ``events``-th of the generation) is committed."""
    if _spans:
        tracing.end(_spans.pop(generation_id, None), end=event, events=events)


def let_go(generation_id: str, why: str) -> None:
    """This consumer stops processing the generation before its end (taken over, gone)."""
    if _spans:
        tracing.end(_spans.pop(generation_id, None), let_go=why)

"""Asking a generation to stop: shared by ``POST /v1/generations/{id}/cancel`` and the WebSocket's cancel."""

from __future__ import annotations

import logging

from app.errors import ApiError
from app.services import Services
from bridge import streams
from bridge.scripts import Status

logger = logging.getLogger(__name__)


def request_cancel(s: Services, generation_id: str) -> None:
    """Request cancellation; raises ApiError 404 or 409. Needs no app context (the WebSocket reader calls it)."""
    result = streams.cancel(s.redis, generation_id, max_length=s.settings.redis_stream_max_length)
    if result is Status.UNKNOWN:
        raise ApiError(404, "not_found", f"No generation with id {generation_id!r}.")
    if result is Status.FINISHED:
        raise ApiError(409, "already_finished", "The generation has already finished.")
    logger.info("Generation %s cancellation requested.", generation_id, extra={"generation_id": generation_id})

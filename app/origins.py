"""Which browser origins may open a WebSocket: this site, and the ``CORS_ORIGINS`` allowed to call the API."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import request

from app.errors import ApiError
from app.services import services


def check_origin() -> None:
    """A browser's WebSocket may come from this site or an allowed origin; others are refused (403)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser
    # Same site: compare hosts only, since behind a TLS proxy the scheme seen here may be http.
    same_site = urlsplit(origin).netloc == request.host
    if not same_site and origin.rstrip("/") not in services().settings.cors_origin_list:
        raise ApiError(403, "origin_not_allowed", f"WebSocket connections from {origin} are not allowed.")

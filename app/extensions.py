"""Flask extensions, created once and bound to the app in ``create_app``."""

from __future__ import annotations

from flask import current_app, request
from flask_cors import CORS
from flask_limiter import HeaderNames, Limiter
from flask_sock import Sock


def _rate_limit_key() -> str:
    """Requests are limited per API key; callers without one (stream tokens, bad keys) per address."""
    services = current_app.extensions["tokenbridge"]
    name = services.auth.key_name(request.headers.get("Authorization"))
    return f"key:{name}" if name else f"ip:{request.remote_addr}"


sock = Sock()
cors = CORS()
# Storage, limits and headers come from the app config (RATELIMIT_*), set in create_app.
# X-RateLimit-* headers on every limited response; Retry-After only on the 429 itself (see create_app), not
# on every answer, where it would override a 503's own.
limiter = Limiter(
    key_func=_rate_limit_key,
    strategy="moving-window",
    headers_enabled=True,
    header_name_mapping={HeaderNames.RETRY_AFTER: "X-RateLimit-Retry-After"},
    swallow_errors=True,
)

"""The Flask front end: ``create_app()`` for gunicorn (``app:create_app()``)."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response
from flask_limiter import RateLimitExceeded
from werkzeug.middleware.proxy_fix import ProxyFix

from app import (
    api,
    dead_letters,
    durable_external,
    durable_store,
    durable_streams,
    health,
    models_api,
    openai_compat,
    openapi,
    pages,
    producers,
    sse,
    stats,
    tracing,
    websocket,
)
from app.audit import REQUEST_ID_HEADER, assign_request_id, record_request
from app.durable_streams import HEADERS as DURABLE_STREAMS_HEADERS
from app.errors import error_response, register_error_handlers
from app.extensions import cors, limiter, sock
from app.services import Services
from bridge import keys
from bridge.logs import configure_logging
from bridge.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    if not settings.auth_disabled and not settings.secret_key:
        raise RuntimeError("SECRET_KEY is required to sign stream tokens (or set AUTH_DISABLED=1 in development).")
    configure_logging(settings.log_format, settings.log_level, process="web")
    _warn_at_start(settings)

    app = Flask(__name__)
    if settings.trusted_proxies:
        # The client address (rate limits, audit records) from X-Forwarded-For, as many entries from its end as
        # there are proxies appending to it; an entry further left may be the client's own invention. Only the
        # address: gunicorn takes the scheme from X-Forwarded-Proto (FORWARDED_ALLOW_IPS), and Host is kept.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=0, x_host=0)  # type: ignore[method-assign]
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
        SOCK_SERVER_OPTIONS={"ping_interval": 25, "max_message_size": 64 * 1024},
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["tokenbridge"] = Services.build(settings)
    app.config.update(
        RATELIMIT_ENABLED=bool(settings.rate_limit),
        RATELIMIT_STORAGE_URI=settings.redis.rate_limit_storage[0],
        RATELIMIT_STORAGE_OPTIONS=app.extensions["tokenbridge"].rate_limit_storage_options,
        RATELIMIT_KEY_PREFIX=keys.RATELIMIT_PREFIX,
    )
    # First of all, so that every answer (a 429 too) carries its request id; audited requests are recorded.
    app.before_request(assign_request_id)
    app.after_request(record_request)
    limiter.init_app(app)
    sock.init_app(app)
    _allow_origins(app, settings)
    _register_blueprints(app, settings)
    register_error_handlers(app, retry_after_s=settings.redis_retry_after_s)
    tracing.instrument(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        retry_after_s = max(1, int(current.reset_at - time.time())) if current else 60
        return error_response(
            429, "rate_limited", f"Too many requests ({exc.description}).", headers={"Retry-After": str(retry_after_s)}
        )

    return app


def _allow_origins(app: Flask, settings: Settings) -> None:
    """CORS on /v1 for the origins of ``CORS_ORIGINS`` (none by default)."""
    if not settings.cors_origin_list:
        return
    # Browsers on these origins may call the API; none by default.
    cors.init_app(
        app,
        resources={r"/v1/*": {"origins": settings.cors_origin_list}},
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "If-None-Match"],
        expose_headers=[
            "Location",
            "Retry-After",
            "x-tokenbridge-generation-id",
            "Idempotent-Replayed",
            "x-tokenbridge-dropped-params",
            REQUEST_ID_HEADER,
            # what a Durable Streams client reads (docs/durable-streams.md)
            *DURABLE_STREAMS_HEADERS,
        ],
        max_age=600,
    )


def _warn_at_start(settings: Settings) -> None:
    for problem in settings.order_problems():
        logger.warning(problem)
    if settings.auth_disabled:
        logger.warning("AUTH_DISABLED is set: every /v1 request is allowed. Development only.")
    elif not settings.api_key_set and not settings.api_keys_file:
        logger.warning("API_KEYS is empty: every /v1 request will get 401.")
    if settings.durable_streams_public:
        logger.warning(
            "DURABLE_STREAMS_PUBLIC is set: anyone may create, write, read and delete streams under /v1/stream/ "
            "without credentials. For the conformance suite and local tests only."
        )
    if not settings.ops_token:
        logger.warning("OPS_TOKEN is not set: /metrics and the checks of /readyz answer anyone.")


# The /v1 blueprints: each counts against the API key's rate limit.
_V1 = (
    api.bp,
    sse.bp,
    websocket.bp,
    durable_streams.bp,
    durable_external.bp,
    durable_store.bp,
    producers.bp,
    openai_compat.bp,
    models_api.bp,
    stats.bp,
    dead_letters.bp,
)


def _register_blueprints(app: Flask, settings: Settings) -> None:
    for blueprint in _V1:
        if settings.rate_limit:
            # One count per API key across every /v1 route.
            limiter.shared_limit(settings.rate_limit, scope="v1")(blueprint)
        app.register_blueprint(blueprint)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(pages.bp)

"""The Flask front end: ``create_app()`` for gunicorn (``app:create_app()``)."""

from __future__ import annotations

import logging

from flask import Flask

from app import api, health, openai_compat, pages, producers
from app.errors import register_error_handlers
from app.extensions import sock
from app.services import Services
from bridge.logs import configure_logging
from bridge.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    if not settings.auth_disabled and not settings.secret_key:
        raise RuntimeError("SECRET_KEY is required to sign stream tokens (or set AUTH_DISABLED=1 in development).")
    configure_logging(settings.log_format, settings.log_level, process="web")
    if settings.auth_disabled:
        logger.warning("AUTH_DISABLED is set: every /v1 request is allowed. Development only.")
    elif not settings.api_key_set:
        logger.warning("API_KEYS is empty: every /v1 request will get 401.")

    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
        SOCK_SERVER_OPTIONS={"ping_interval": 25, "max_message_size": 64 * 1024},
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["tokenbridge"] = Services.build(settings)
    sock.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(producers.bp)
    app.register_blueprint(openai_compat.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(pages.bp)
    register_error_handlers(app, retry_after_s=settings.redis_retry_after_s)
    return app

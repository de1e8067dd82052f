"""The baseline: Flask-SSE (Redis pub/sub), the common Flask choice, served the same way (gunicorn gevent)."""

from __future__ import annotations

import os

from flask import Flask
from flask_sse import sse


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["REDIS_URL"] = os.environ["REDIS_URL"]
    app.register_blueprint(sse, url_prefix="/stream")
    return app

"""Flask extensions, created once and bound to the app in ``create_app``."""

from __future__ import annotations

from flask_sock import Sock

sock = Sock()

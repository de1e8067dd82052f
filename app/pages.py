"""The pages ``web`` serves itself: the chat demo at ``/`` and the operations dashboard at ``/dashboard``.

Both are static HTML plus scripts from ``app/static`` that call the same JSON endpoints as any client; the
only server-side data the dashboard adds is ``/dashboard/data`` (recent dead letters), behind the API key.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, g, render_template, request

from app.client_module import module
from app.inputs import authenticate
from app.responses import json_response
from app.schemas import DashboardData, DeadLetterView, RecentDeadLetters
from app.services import services
from bridge import dead_letters
from bridge.version import VERSION

bp = Blueprint("pages", __name__)

RECENT_DEAD_LETTERS = 20
# honcho gives each Procfile process its own port, 100 apart: flower is the fourth (as under `make dev`).
FLOWER_PORT_OFFSET = 300


@bp.get("/")
def index() -> str:
    models = [
        {"name": name, "provider": spec.provider}
        for name, spec in sorted(services().models.items())
        if spec.provider != "external"
    ]
    return render_template("index.html", models=models)


@bp.get("/static/tokenbridge.mjs")
def client_module() -> Response:
    """The browser client as an ES module, made from ``tokenbridge.js`` (``app.client_module``)."""
    text, etag = module()
    response = Response(text, mimetype="text/javascript")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"  # revalidated with the ETag, as the static files are
    response.make_conditional(request)
    return response


@bp.get("/dashboard")
def dashboard() -> str:
    return render_template("dashboard.html", flower_url=_flower_url(), version=VERSION)


@bp.get("/dashboard/data")
def dashboard_data() -> Response:
    """What the dashboard cannot read from /readyz, /metrics or /v1/stats: the latest dead letters.

    A key sees those of its owner's generations; ``admin`` sees all.
    """
    authenticate()
    letters, total = dead_letters.list_dead_letters(services().redis, limit=RECENT_DEAD_LETTERS)
    recent = [DeadLetterView(**letter.public()) for letter in letters if g.principal.owns(letter.owner)]
    return json_response(DashboardData(dead_letters=RecentDeadLetters(total=total, recent=recent)))


def _flower_url() -> str:
    """``FLOWER_URL`` when set, else this host on ``PORT + 300`` (where ``make dev`` runs Flower)."""
    settings = services().settings
    if settings.flower_url:
        return settings.flower_url
    host = urlsplit(f"//{request.host}").hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    return f"http://{host}:{settings.port + FLOWER_PORT_OFFSET}/"

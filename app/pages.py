"""The pages ``web`` serves itself: the chat demo at ``/`` and the operations dashboard at ``/dashboard``.

Both are static HTML plus scripts from ``app/static`` that call the same JSON endpoints as any client; the
only server-side data the dashboard adds is ``/dashboard/data`` (recent dead letters), behind the API key.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, jsonify, render_template, request

from app.inputs import authenticate
from app.services import services
from bridge import keys

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


@bp.get("/dashboard")
def dashboard() -> str:
    return render_template("dashboard.html", flower_url=_flower_url())


@bp.get("/dashboard/data")
def dashboard_data() -> Response:
    """What the dashboard cannot read from /readyz, /metrics or /v1/stats: the latest dead letters."""
    authenticate()
    client = services().redis
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.DEAD_LETTERS)
    pipe.xrevrange(keys.DEAD_LETTERS, "+", "-", count=RECENT_DEAD_LETTERS)
    total, entries = pipe.execute()
    if not g.principal.sees_everything:
        entries = _owned(client, entries)
    return jsonify({"dead_letters": {"total": int(total), "recent": [_dead_letter(e) for e in entries]}})


def _owned(client: Any, entries: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, str]]]:
    """The dead letters of the caller's own generations (an owner sees only those; ``admin`` sees all)."""
    pipe = client.pipeline(transaction=False)
    for _, fields in entries:
        pipe.hmget(keys.gen_meta(fields.get("generation_id", "")), "owner", "api_key")
    owners = pipe.execute()
    return [entry for entry, (owner, name) in zip(entries, owners, strict=True) if g.principal.owns(owner or name)]


def _dead_letter(entry: tuple[str, dict[str, str]]) -> dict[str, Any]:
    entry_id, fields = entry
    deliveries = fields.get("deliveries", "")
    return {
        "id": entry_id,
        "at": int(entry_id.split("-", 1)[0]) / 1000,  # the stream id's milliseconds: when it was moved there
        "generation_id": fields.get("generation_id"),
        "entry_id": fields.get("entry_id"),
        "error": fields.get("error"),
        "deliveries": int(deliveries) if deliveries.isdigit() else None,
        "consumer": fields.get("consumer"),
    }


def _flower_url() -> str:
    """``FLOWER_URL`` when set, else this host on ``PORT + 300`` (where ``make dev`` runs Flower)."""
    settings = services().settings
    if settings.flower_url:
        return settings.flower_url
    host = urlsplit(f"//{request.host}").hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    return f"http://{host}:{settings.port + FLOWER_PORT_OFFSET}/"

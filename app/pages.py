"""The page at ``/``: type a prompt, pick a model, watch the answer stream in."""

from __future__ import annotations

from flask import Blueprint, render_template

from app.services import services

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    models = sorted(name for name, spec in services().models.items() if spec.provider != "external")
    return render_template("index.html", models=models)

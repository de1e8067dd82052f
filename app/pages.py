"""The page at ``/``: type a prompt, pick a model, watch the answer stream in."""

from __future__ import annotations

from flask import Blueprint, render_template

from bridge.models import available_models

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html", models=available_models())

"""Every /v1 route is described: in the OpenAPI document, and by the action its scope check uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from app.inputs import ROUTE_ACTIONS
from app.openapi import document
from bridge.settings import Settings


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app(Settings(auth_disabled=True, redis_url="redis://127.0.0.1:1"))


def _v1_rules(app: Flask) -> list[tuple[str, str]]:
    return [(rule.endpoint, rule.rule) for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1")]


def test_every_v1_route_says_what_it_does(app: Flask) -> None:
    assert {endpoint for endpoint, _ in _v1_rules(app)} - set(ROUTE_ACTIONS) == set()


def test_every_v1_route_is_in_the_openapi_document(app: Flask) -> None:
    documented = set(document()["paths"])
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule) for _, rule in _v1_rules(app)}
    assert routes - documented == set()


def test_every_v1_route_is_in_the_api_reference(app: Flask) -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text(encoding="utf-8")
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1"):
            continue
        # /v1/generations/<generation_id>/cancel matches `POST /v1/generations/{id}/cancel`: any {name}.
        path = "".join(
            r"\{[^}/]+\}" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]+>)", rule.rule)
        )
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if not re.search(rf"`{method} {path}`", reference):
                missing.append(f"{method} {rule.rule}")
    assert missing == []


def test_the_browser_module_is_served_made_from_the_script(app: Flask) -> None:
    from app.client_module import SCRIPT, module_from_script

    client = app.test_client()
    served = client.get("/static/tokenbridge.mjs")
    assert served.status_code == 200 and served.mimetype == "text/javascript"
    text = served.get_data(as_text=True)
    assert text == module_from_script(SCRIPT.read_text())
    assert "export { socket, stream };" in text and "global.Tokenbridge" not in text
    # And a browser that has it gets 304
    again = client.get("/static/tokenbridge.mjs", headers={"If-None-Match": served.headers["ETag"]})
    assert again.status_code == 304

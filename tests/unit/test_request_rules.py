"""The rules every /v1 request meets before its route runs: one set of body rules for every route, no redirect page."""

from __future__ import annotations

import re

import pytest
from flask import Flask

from app import create_app
from app.inputs import BODY_ENDPOINTS
from bridge.settings import Settings

# Redis is never reached: each of these answers comes before a route would need it.
BODIES = [
    pytest.param(b"x" * 2_000_000, "application/json", 413, id="too-large"),
    pytest.param(b'{"a": ', "application/json", 400, id="malformed"),
    pytest.param(b"[" * 1025 + b"]" * 1025, "application/json", 400, id="deeper-than-1024"),
    pytest.param(b'{"a": "\xff"}', "application/json", 400, id="not-utf-8"),
    pytest.param(b"a=1", "text/plain", 415, id="not-json"),
]


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app(Settings(auth_disabled=True, redis_url="redis://127.0.0.1:1", rate_limit=""))


def _routes(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, path) of every /v1 route but the WebSocket, with ids of the right shape."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1") or rule.websocket:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "1-0" if m[1] == "dead_letter_id" else "gen_x", rule.rule)
        routes += [(rule.endpoint, method, path) for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]
    return routes


@pytest.mark.parametrize(("body", "content_type", "status"), BODIES)
def test_every_route_answers_a_bad_body_alike(app: Flask, body: bytes, content_type: str, status: int) -> None:
    client = app.test_client()
    answers = {
        (method, path): client.open(path, method=method, data=body, content_type=content_type).status_code
        for endpoint, method, path in _routes(app)
        # they look the generation up in Redis first
        if not endpoint.startswith(("producers.", "durable_external."))
        # A Durable Streams stream takes a body of its own content type, checked against the stream in Redis; only
        # the size limit comes first
        and (not endpoint.startswith("durable_store.") or status == 413)
    }
    assert {route: got for route, got in answers.items() if got != status} == {}


def test_a_route_that_takes_no_body_refuses_its_fields(app: Flask) -> None:
    client = app.test_client()
    for endpoint, method, path in _routes(app):
        if endpoint in BODY_ENDPOINTS:
            continue
        answer = client.open(path, method=method, json={"scope": "admin"})
        assert answer.status_code == 422, (method, path)
        assert answer.json is not None and answer.json["error"]["details"][0]["field"] == "scope"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/generations//gen_x"), ("GET", "/v1//generations/gen_x"), ("POST", "/v1/sessions/..//token")],
)
def test_a_doubled_slash_in_v1_is_a_json_404_not_a_redirect(app: Flask, method: str, path: str) -> None:
    answer = app.test_client().open(path, method=method)
    assert (answer.status_code, answer.mimetype) == (404, "application/json")
    assert answer.json is not None and answer.json["error"]["code"] == "not_found"


def test_every_answer_carries_a_request_id_and_a_proxys_is_kept(app: Flask) -> None:
    client = app.test_client()
    assert re.match(r"^req_[0-9a-f]{16}$", client.get("/v1/nowhere").headers["X-Request-ID"])
    assert client.get("/healthz", headers={"X-Request-ID": "nginx-7f3a"}).headers["X-Request-ID"] == "nginx-7f3a"
    assert client.get("/healthz", headers={"X-Request-ID": "<bad id>"}).headers["X-Request-ID"].startswith("req_")

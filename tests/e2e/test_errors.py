"""Every bad request gets the right status and a JSON error body."""

from __future__ import annotations

import socket

import httpx
import orjson
import pytest

from tests.support.stack import OTHER_KEY, Stack

pytestmark = pytest.mark.e2e


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, object] = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic e2e-key", "Bearer"])
def test_missing_or_wrong_api_key_is_401_json(stack: Stack, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(stack.url("/v1/generations"), json={"model": "echo", "prompt": "x"}, headers=headers)
    _error(response, 401)
    assert _error(httpx.get(stack.url("/v1/generations/gen_x"), headers=headers), 401)


def test_a_second_named_key_is_accepted(stack: Stack) -> None:
    response = stack.post(
        "/v1/generations", {"model": "echo", "prompt": "x"}, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert response.status_code == 202


def test_malformed_json_is_400(stack: Stack) -> None:
    response = stack.post(
        "/v1/generations", content=b'{"model": "echo", ', headers={"Content-Type": "application/json"}
    )
    _error(response, 400, "malformed_json")


def test_a_body_that_is_not_json_is_415(stack: Stack) -> None:
    response = stack.post(
        "/v1/generations", content=b"model=echo", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    _error(response, 415, "unsupported_media_type")


def test_invalid_fields_are_422_with_each_field(stack: Stack) -> None:
    response = stack.post(
        "/v1/generations",
        {
            "model": "echo",
            "prompt": "x",
            "messages": [{"role": "wizard", "content": "y"}],
            "max_tokens": -1,
            "temperature": 9,
        },
    )
    error = _error(response, 422, "validation_failed")
    fields = {d["field"] for d in error["details"]}  # type: ignore[attr-defined]
    assert {"messages.0.role", "max_tokens", "temperature"} <= fields


def test_prompt_and_messages_together_are_422(stack: Stack) -> None:
    response = stack.post("/v1/generations", {"model": "echo"})
    _error(response, 422, "validation_failed")


def test_unknown_model_is_422_listing_the_available_ones(stack: Stack) -> None:
    error = _error(stack.post("/v1/generations", {"model": "gpt-17", "prompt": "x"}), 422, "validation_failed")
    [detail] = error["details"]  # type: ignore[misc]
    assert detail["field"] == "model"
    assert set(detail["available"]) >= {"echo", "synthetic"}


def test_bad_options_and_too_many_tokens_are_422(stack: Stack) -> None:
    error = _error(
        stack.post(
            "/v1/generations", {"model": "echo", "prompt": "x", "options": {"delay_ms": 99999}, "max_tokens": 10**9}
        ),
        422,
    )
    fields = {d["field"] for d in error["details"]}  # type: ignore[attr-defined]
    assert fields == {"options.delay_ms", "max_tokens"}


def test_unknown_ids_are_404(stack: Stack) -> None:
    _error(stack.get("/v1/generations/gen_doesnotexist"), 404, "not_found")
    _error(stack.get("/v1/generations/gen_doesnotexist/events"), 404, "not_found")
    _error(stack.post("/v1/generations/gen_doesnotexist/cancel"), 404, "not_found")
    _error(stack.get("/v1/generations/bad%7Bid%7D"), 404, "not_found")
    _error(stack.get("/v1/sessions/nobody/events"), 404, "not_found")
    _error(stack.get("/v1/no/such/route"), 404, "not_found")


def test_an_invalid_last_event_id_is_400(stack: Stack) -> None:
    gen = stack.create(model="echo", prompt="x")
    _error(stack.get(gen["events_url"], headers={"Last-Event-ID": "yesterday"}), 400, "invalid_last_event_id")


def test_a_body_over_the_limit_is_413(stack: Stack) -> None:
    response = stack.post("/v1/generations", {"model": "echo", "prompt": "x" * 2_000_000})
    _error(response, 413)


def test_wrong_method_is_405_json(stack: Stack) -> None:
    _error(stack.post("/v1/generations/gen_x"), 405)


# -- every route applies the same body rules -------------------------------------------------------

_BODIES = [
    pytest.param(b"x" * 2_000_000, "application/json", 413, "payload_too_large", id="too-large"),
    pytest.param(b'{"a": ', "application/json", 400, "malformed_json", id="malformed"),
    pytest.param(b"[" * 100_000, "application/json", 400, "malformed_json", id="too-deep"),
    pytest.param(b'{"a": "\xff"}', "application/json", 400, "malformed_json", id="not-utf-8"),
    pytest.param(b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type", id="not-json"),
]


def _bodiless_routes(stack: Stack) -> list[tuple[str, str]]:
    gen = stack.create(model="external", prompt="bodies")
    return [
        ("POST", f"/v1/generations/{gen['id']}/token"),
        ("POST", f"/v1/sessions/{gen['session_id']}/token"),
        ("POST", f"/v1/generations/{gen['id']}/cancel"),
        ("GET", f"/v1/generations/{gen['id']}"),
    ]


@pytest.mark.parametrize(("body", "content_type", "status", "code"), _BODIES)
def test_a_route_without_a_body_applies_the_body_rules_to_one(
    stack: Stack, body: bytes, content_type: str, status: int, code: str
) -> None:
    for method, path in [*_bodiless_routes(stack), ("POST", "/v1/generations")]:
        response = httpx.request(
            method, stack.url(path), content=body, headers={**stack.headers, "Content-Type": content_type}, timeout=10
        )
        _error(response, status, code)


def test_a_route_without_a_body_refuses_fields_and_takes_nothing_or_an_empty_object(stack: Stack) -> None:
    for method, path in _bodiless_routes(stack):
        error = _error(httpx.request(method, stack.url(path), json={"scope": "admin"}, headers=stack.headers), 422)
        assert error["details"] == [
            {"field": "scope", "message": "This route takes no body.", "type": "extra_forbidden"}
        ]
    gen = stack.create(model="external", prompt="empty")
    assert stack.post(f"/v1/generations/{gen['id']}/token", {}).status_code == 200
    assert stack.post(f"/v1/generations/{gen['id']}/token").status_code == 200


# -- nothing under /v1 answers with HTML ----------------------------------------------------------


def _raw(stack: Stack, request_line: str, headers: str = "") -> tuple[int, str, bytes]:
    """Send ``request_line`` as is (no client normalises it); the answer's status, content type and body."""
    with socket.create_connection(("127.0.0.1", stack.web_ports[0]), timeout=10) as sock:
        auth = stack.headers["Authorization"]
        sock.sendall(
            f"{request_line}\r\nHost: x\r\nAuthorization: {auth}\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields.get("Content-Type", ""), body


_ODD = [
    ("GET /v1/generations//{id} HTTP/1.1", 404),
    ("GET /v1//generations/{id} HTTP/1.1", 404),
    ("GET //v1/generations/{id} HTTP/1.1", 200),  # leading slashes are one (Werkzeug's routing strips them)
    ("GET /v1/generations/{id}// HTTP/1.1", 404),
    ("POST /v1/sessions/..%2f/token HTTP/1.1", 404),
    ("POST /v1/sessions//token HTTP/1.1", 404),
    ("GET /v1/generations/{id}/ HTTP/1.1", 404),
    ("GET /v1/generations/%00 HTTP/1.1", 404),
    ("GET /v1/generations/%ZZ HTTP/1.1", 404),
    ("GET /v1/generations/../healthz HTTP/1.1", 404),
    ("GET /v1/generations/{id}/ws HTTP/1.1", 400),  # not an upgrade
    ("GET /v1/" + "a" * 9000 + " HTTP/1.1", 414),
    ("GET /v1/generations HTTP/9.9", 400),
    ("BREW /v1/generations HTTP/1.1", 405),
    ("GET /v1/generations/{id}", 400),
]


def test_odd_paths_and_request_lines_get_json_never_html(stack: Stack) -> None:
    gen = stack.create(model="external", prompt="odd")
    for request_line, status in _ODD:
        answer = _raw(stack, request_line.replace("{id}", gen["id"]))
        assert answer[:2] == (status, "application/json"), (request_line[:80], answer)
        if status >= 400:
            error = orjson.loads(answer[2])["error"]
            assert error["code"] and error["message"] and b"<" not in answer[2], request_line[:80]
    too_long = _raw(stack, "GET /v1/models HTTP/1.1", f"X-Big: {'b' * 9000}\r\n")
    assert too_long[:2] == (431, "application/json")

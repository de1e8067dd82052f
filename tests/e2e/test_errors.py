"""Every bad request gets the right status and a JSON error body."""

from __future__ import annotations

import httpx
import pytest

from tests.stack import OTHER_KEY, Stack

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

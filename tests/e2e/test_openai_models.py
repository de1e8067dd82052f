"""``/v1/models`` for OpenAI clients, and OpenAI's error shape on the OpenAI-compatible routes (only there)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from openai import (
    AuthenticationError,
    NotFoundError,
    OpenAI,
    RateLimitError,
    UnprocessableEntityError,
)

from tests.support.procfile import ROOT
from tests.support.sse import iter_messages
from tests.support.stack import API_KEY, Stack, running_stack

pytestmark = pytest.mark.e2e

OPENAI_FIELDS = {"message", "type", "param", "code"}


def _client(stack: Stack, key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0, timeout=20)


def _openai_error(response: httpx.Response, status: int, error_type: str, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= OPENAI_FIELDS, error
    assert (error["type"], error["code"]) == (error_type, code)
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_the_openai_package_lists_every_configured_model(stack: Stack) -> None:
    with _client(stack) as client:
        models = list(client.models.list())
    # The built-in models and those of MODELS_FILE, as OpenAI model objects
    assert [m.id for m in models] == ["echo", "synthetic", "external", "fake-gpt", "fake-gpt-cached", "fake-claude"]
    assert all(m.object == "model" and m.created > 1_700_000_000 for m in models)
    owners = {m.id: m.owned_by for m in models}
    assert owners == {
        "echo": "tokenbridge",
        "synthetic": "tokenbridge",
        "external": "tokenbridge",
        "fake-gpt": "openai",
        "fake-gpt-cached": "openai",
        "fake-claude": "anthropic",
    }


def test_the_openai_package_retrieves_one_model_with_tokenbridge_details(stack: Stack) -> None:
    with _client(stack) as client:
        model = client.models.retrieve("fake-gpt")
        with pytest.raises(NotFoundError) as missing:
            client.models.retrieve("gpt-17")
    assert (model.id, model.object, model.owned_by) == ("fake-gpt", "model", "openai")
    assert (model.model_extra or {})["tokenbridge"] == {"provider": "openai", "max_tokens": 64}
    assert (missing.value.type, missing.value.code) == ("not_found_error", "model_not_found")
    assert "gpt-17" in missing.value.message


def test_a_listed_model_can_be_used_for_a_chat_completion(stack: Stack) -> None:
    with _client(stack) as client:
        first = next(m.id for m in client.models.list() if m.id == "echo")
        completion = client.chat.completions.create(model=first, messages=[{"role": "user", "content": "listed"}])
    assert completion.choices[0].message.content == "listed"


def test_listing_models_needs_an_api_key(stack: Stack) -> None:
    # Given a stream token, which may only read its own generation
    token = stack.create(model="echo", prompt="x")["stream_token"]
    # When it asks for the models, Then it is refused in OpenAI's shape
    response = httpx.get(stack.url(f"/v1/models?token={token}"))
    _openai_error(response, 403, "permission_error", "forbidden")
    with _client(stack, key="not-a-key") as client, pytest.raises(AuthenticationError) as info:
        client.models.list()
    assert (info.value.type, info.value.code, info.value.param) == ("authentication_error", "invalid_credentials", None)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/echo", "/v1/chat/completions"])
def test_missing_credentials_get_an_openai_401(stack: Stack, path: str) -> None:
    method = "POST" if path.endswith("completions") else "GET"
    response = httpx.request(method, stack.url(path), json={"model": "echo", "messages": []})
    _openai_error(response, 401, "authentication_error", "missing_credentials")


def test_validation_errors_of_chat_completions_name_the_field(stack: Stack) -> None:
    # An unknown model: 422, param "model", and the details listing what is available
    with _client(stack) as client, pytest.raises(UnprocessableEntityError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    error = info.value
    assert (error.type, error.code, error.param) == ("invalid_request_error", "validation_failed", "model")
    [detail] = info.value.body["details"]  # type: ignore[index]
    assert "echo" in detail["available"]
    # A field this endpoint does not support
    response = stack.post(
        "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "x"}], "tools": []}
    )
    assert _openai_error(response, 422, "invalid_request_error", "validation_failed")["param"] == "tools"


def test_bodies_refused_before_validation_get_openai_errors(stack: Stack) -> None:
    url = stack.url("/v1/chat/completions")
    malformed = httpx.post(url, content=b'{"model": ', headers={**stack.headers, "Content-Type": "application/json"})
    _openai_error(malformed, 400, "invalid_request_error", "malformed_json")
    not_json = httpx.post(url, content=b"model=echo", headers={**stack.headers, "Content-Type": "text/plain"})
    _openai_error(not_json, 415, "invalid_request_error", "unsupported_media_type")
    too_large = stack.post("/v1/chat/completions", {"model": "echo", "messages": [], "x": "a" * 2_000_000})
    _openai_error(too_large, 413, "invalid_request_error", "payload_too_large")
    wrong_method = stack.get("/v1/chat/completions")
    _openai_error(wrong_method, 405, "invalid_request_error", "method_not_allowed")


def test_a_generation_failing_mid_stream_ends_with_an_openai_error_chunk(stack: Stack) -> None:
    body = {
        "model": "synthetic",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 20,
        "stream": True,
        "tokenbridge": {"options": {"tokens_per_second": 1000, "fail_after_tokens": 3}},
    }
    with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body, headers=stack.headers, timeout=20) as r:
        data = [message.data for message in iter_messages(r.iter_bytes())]
    assert "[DONE]" not in data
    error = orjson.loads(data[-1])["error"]
    assert set(error) == OPENAI_FIELDS
    assert (error["type"], error["code"], error["param"]) == ("server_error", "provider_error", None)
    assert "synthetic failure" in error["message"]


def test_every_other_route_keeps_its_own_error_shape(stack: Stack) -> None:
    unauthenticated = httpx.get(stack.url("/v1/generations/gen_x"))
    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == {
        "error": {"code": "missing_credentials", "message": unauthenticated.json()["error"]["message"], "details": None}
    }
    invalid = stack.post("/v1/generations", {"model": "gpt-17", "prompt": "x"})
    assert invalid.status_code == 422
    assert set(invalid.json()["error"]) == {"code", "message", "details"}
    unknown = stack.get("/v1/modelsx")
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {"code", "message", "details"}


def test_the_openapi_document_describes_the_model_routes(stack: Stack) -> None:
    document = stack.get("/openapi.json").json()
    paths = document["paths"]
    assert {"/v1/models", "/v1/models/{model_id}"} <= set(paths)

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        """The schema a ``$ref`` names in the document's components (the schema itself otherwise)."""
        ref = schema.get("$ref")
        return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema

    error = resolved(paths["/v1/models/{model_id}"]["get"]["responses"]["404"]["content"]["application/json"]["schema"])
    assert set(resolved(error["properties"]["error"])["required"]) == OPENAI_FIELDS


# -- rate limits ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A web process alone, with a rate limit that bites after three requests."""
    with running_stack(
        tmp_path_factory.mktemp("limited-redis"),
        ROOT / "test-artifacts" / "openai-limited-logs",
        processes=("web",),
        RATE_LIMIT="3/minute",
        WEB_CONCURRENCY="1",
    ) as stack:
        yield stack


def test_rate_limited_openai_requests_get_an_openai_429_with_retry_after(limited: Stack) -> None:
    with _client(limited) as client:
        for _ in range(3):
            client.models.list()
        with pytest.raises(RateLimitError) as info:
            client.models.list()
    assert (info.value.type, info.value.code) == ("rate_limit_error", "rate_limited")
    assert int(info.value.response.headers["Retry-After"]) > 0
    # The same limit on another route answers in the project's own shape
    other = limited.get("/v1/generations/gen_x")
    assert other.status_code == 429 and set(other.json()["error"]) == {"code", "message", "details"}
    assert int(other.headers["Retry-After"]) > 0

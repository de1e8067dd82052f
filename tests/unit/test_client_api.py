"""tokenbridge_client.client: submit, get, cancel and status against a real HTTP server on a loopback socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from tokenbridge_client.client import TokenbridgeAPIError, TokenbridgeClient, TokenbridgeConnectionError

from tests.support.scripted_server import ScriptedServer, api_error, hang_up, status

Serve = Callable[..., ScriptedServer]
MakeClient = Callable[..., TokenbridgeClient]

CREATED = {
    "id": "gen_1",
    "session_id": "ses_1",
    "status": "queued",
    "model": "echo",
    "events_url": "/v1/generations/gen_1/events",
    "stream_token": "tok",
}


def test_submit_posts_the_body_and_returns_the_answer(serve: Serve, make_client: MakeClient) -> None:
    server = serve(status(202, CREATED))
    client = make_client(server.url + "/")

    created = client.submit(
        "echo", "Hello", max_tokens=5, options={"delay_ms": 1}, session_id=None, idempotency_key="once"
    )

    assert created == CREATED
    request = server.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/generations")
    # Fields left at None are not sent: the server's defaults apply.
    assert orjson.loads(request.body) == {
        "model": "echo",
        "prompt": "Hello",
        "max_tokens": 5,
        "options": {"delay_ms": 1},
    }
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["idempotency-key"] == "once"
    assert request.headers["content-type"] == "application/json"


def test_submit_with_messages(serve: Serve, make_client: MakeClient) -> None:
    server = serve(status(202, CREATED))
    client = make_client(server.url)

    client.submit("echo", messages=[{"role": "user", "content": "Hi"}])

    assert orjson.loads(server.requests[0].body) == {"model": "echo", "messages": [{"role": "user", "content": "Hi"}]}


def test_a_validation_error_carries_status_code_message_and_details(serve: Serve, make_client: MakeClient) -> None:
    details = [{"field": "model", "message": "Unknown model.", "type": "value_error", "available": ["echo"]}]
    server = serve(api_error(422, "validation_failed", "The request is not valid: model: Unknown model.", details))
    client = make_client(server.url)

    with pytest.raises(TokenbridgeAPIError) as caught:
        client.submit("nope", "Hello")

    error = caught.value
    assert (error.status, error.code, error.details) == (422, "validation_failed", details)
    assert str(error) == "422 validation_failed: The request is not valid: model: Unknown model."


def test_a_429_keeps_its_retry_after(serve: Serve, make_client: MakeClient) -> None:
    server = serve(api_error(429, "rate_limited", "Too many requests.", Retry_After="7"))
    client = make_client(server.url)

    with pytest.raises(TokenbridgeAPIError) as caught:
        client.get("gen_1")

    assert caught.value.retry_after_s == 7


def test_an_error_page_that_is_not_json_still_raises_an_api_error(serve: Serve, make_client: MakeClient) -> None:
    def html(handler: Any) -> None:
        body = b"<html>Bad Gateway</html>"
        handler.send_response(502)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server = serve(html)
    client = make_client(server.url)

    with pytest.raises(TokenbridgeAPIError) as caught:
        client.status()

    assert (caught.value.status, caught.value.code) == (502, "http_error")
    assert "Bad Gateway" in caught.value.message


def test_get_and_cancel_use_the_generation_paths(serve: Serve, make_client: MakeClient) -> None:
    server = serve(
        status(200, {"id": "gen_1", "status": "running"}), status(202, {"id": "gen_1", "status": "cancelling"})
    )
    client = make_client(server.url)

    assert client.get("gen_1")["status"] == "running"
    assert client.cancel("gen_1")["status"] == "cancelling"
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/generations/gen_1"),
        ("POST", "/v1/generations/gen_1/cancel"),
    ]


def test_cancelling_a_finished_generation_raises_409(serve: Serve, make_client: MakeClient) -> None:
    server = serve(api_error(409, "already_finished", "The generation has already finished."))
    client = make_client(server.url)

    with pytest.raises(TokenbridgeAPIError, match="already_finished"):
        client.cancel("gen_1")


def test_status_returns_the_body_also_when_unhealthy(serve: Serve, make_client: MakeClient) -> None:
    unhealthy = {"status": "unhealthy", "checks": {"redis": {"status": "unhealthy", "error": "refused"}}}
    server = serve(status(503, unhealthy, Retry_After="2"))
    client = make_client(server.url)

    assert client.status() == unhealthy
    assert server.requests[0].path == "/readyz"


def test_an_unreachable_server_raises_a_connection_error_naming_the_url(make_client: MakeClient) -> None:
    client = make_client("http://127.0.0.1:9")

    with pytest.raises(
        TokenbridgeConnectionError, match=r"cannot reach http://127\.0\.0\.1:9/v1/generations/gen_1 \(tried 3 times\)"
    ):
        client.get("gen_1")


def test_a_submission_that_got_no_answer_is_sent_again_with_the_same_idempotency_key(
    serve: Serve, make_client: MakeClient
) -> None:
    # Given a server that drops the first connection before answering
    server = serve(hang_up, status(202, CREATED))
    client = make_client(server.url)

    # When a generation is submitted without a key of its own
    created = client.submit("echo", "Hello")

    # Then it was sent twice, with one random Idempotency-Key (the server answers the second with the first's
    # generation if the first got through), and the answer is returned
    assert created == CREATED
    first, second = server.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert len(first.headers["idempotency-key"]) == 32
    assert first.body == second.body


def test_each_submission_has_its_own_idempotency_key(serve: Serve, make_client: MakeClient) -> None:
    server = serve(status(202, CREATED))
    client = make_client(server.url)

    client.submit("echo", "Hello")
    client.submit("echo", "Hello")

    assert server.requests[0].headers["idempotency-key"] != server.requests[1].headers["idempotency-key"]


def test_a_503_is_tried_again_after_its_retry_after(serve: Serve, make_client: MakeClient) -> None:
    server = serve(api_error(503, "redis_unavailable", "Redis is not reachable.", Retry_After="1"), status(200, {}))
    client = make_client(server.url)

    assert client.get("gen_1") == {}

    first, second = server.requests
    assert second.at - first.at >= 1.0


def test_a_503_asking_for_a_longer_wait_than_max_backoff_is_raised_at_once(
    serve: Serve, make_client: MakeClient
) -> None:
    server = serve(api_error(503, "redis_out_of_memory", "Redis is out of memory.", Retry_After="60"))
    client = make_client(server.url, max_backoff_s=5)

    with pytest.raises(TokenbridgeAPIError) as caught:
        client.submit("echo", "Hello")

    assert (caught.value.code, caught.value.retry_after_s) == ("redis_out_of_memory", 60)
    assert len(server.requests) == 1


def test_a_cancel_is_not_sent_twice(serve: Serve, make_client: MakeClient) -> None:
    # A repeated cancel of a generation the first one ended would be refused with 409 already_finished.
    server = serve(hang_up, status(202, {"id": "gen_1", "status": "cancelling"}))
    client = make_client(server.url)

    with pytest.raises(TokenbridgeConnectionError, match="cannot reach"):
        client.cancel("gen_1")

    assert len(server.requests) == 1


def test_retries_are_bounded_by_request_retries(serve: Serve, make_client: MakeClient) -> None:
    server = serve(hang_up)
    client = make_client(server.url, request_retries=1)

    with pytest.raises(TokenbridgeConnectionError, match=r"\(tried 2 times\)"):
        client.get("gen_1")

    assert len(server.requests) == 2


def test_a_submission_whose_key_is_still_in_use_is_sent_again_after_retry_after(
    serve: Serve, make_client: MakeClient
) -> None:
    # Given a server still storing the generation of an earlier try that was cut off before its answer
    in_use = api_error(409, "idempotency_key_in_use", "Still being processed.", Retry_After="1")
    server = serve(in_use, status(202, CREATED))
    client = make_client(server.url)

    created = client.submit("echo", "Hello")

    assert created == CREATED
    first, second = server.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert second.at - first.at >= 1.0


def test_a_key_reused_with_another_body_is_not_sent_again(serve: Serve, make_client: MakeClient) -> None:
    server = serve(api_error(409, "idempotency_key_reused", "Used with a different body."))
    client = make_client(server.url)

    with pytest.raises(TokenbridgeAPIError, match="idempotency_key_reused"):
        client.submit("echo", "Hello", idempotency_key="k1")

    assert len(server.requests) == 1


def test_the_old_module_names_still_import_the_client_with_a_warning() -> None:
    import importlib
    import sys

    import pytest
    from tokenbridge_client import _errors, async_client, client

    expected = {
        "tokenbridge.client": (client, ("TokenbridgeClient", "SseMessage", "collect_text")),
        "tokenbridge.async_client": (async_client, ("AsyncTokenbridgeClient", "acollect_text")),
        "tokenbridge.errors": (_errors, ("TokenbridgeError",)),
    }
    for name, (source, names) in expected.items():
        sys.modules.pop(name, None)
        with pytest.warns(DeprecationWarning, match="import tokenbridge_client instead"):
            module = importlib.import_module(name)
        for attribute in names:
            assert getattr(module, attribute) is getattr(source, attribute), (name, attribute)

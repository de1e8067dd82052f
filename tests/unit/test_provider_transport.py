"""The HTTP transport both upstream providers share (status codes, connection failures, timeouts, cancellation),
run once on each wire format, OpenAI Chat Completions and Anthropic Messages, against a real local server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.producer import Chunk, with_retries
from tasks.providers.connections import close_clients, new_client
from tasks.providers.upstream import UpstreamProvider
from tests.support.scripted_upstream import (
    Exchange,
    Script,
    no_watcher_left,
    refused_base_url,
    run,
    split_finish,
    stop_later,
)
from tests.support.wire_formats import ANTHROPIC, OPENAI, WireFormat

PROMPT = GenerationRequest(model="any", prompt="Say hello")


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> WireFormat:
    format_: WireFormat = request.param
    return format_


@pytest.fixture
def provider(wire: WireFormat, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., UpstreamProvider]]:
    """``create(base_url, **spec_fields)``: the wire format's provider on a client that the fixture closes."""
    monkeypatch.setenv(wire.key_env, wire.key)
    clients: list[httpx.Client] = []

    def create(base_url: str, **fields: Any) -> UpstreamProvider:
        spec = wire.spec(base_url, **fields)
        clients.append(new_client())
        return wire.provider(spec, client=clients[-1])

    yield create
    for client in clients:
        client.close()


def answer(wire: WireFormat, *texts: str) -> Script:
    """A script streaming a whole answer of ``texts`` in ``wire``'s frames."""

    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(*wire.opening, *[wire.token(text) for text in texts], *wire.closing)
        ex.end_stream()

    return script


# ---------------------------------------------------------------------------------------------------------------
# Streams that succeed.


def test_a_provider_without_a_client_streams_over_its_upstreams_shared_client(
    upstream: Any, wire: WireFormat, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(wire.key_env, wire.key)
    server = upstream(answer(wire, "Hi"))
    try:
        model = wire.provider(wire.spec(server.base_url + "/"))
        tokens, finish = split_finish(run(model, PROMPT))
    finally:
        close_clients()
    assert (tokens, finish.finish_reason) == (["Hi"], "stop")
    assert server.requests[0].path == wire.path


def test_retries_after_a_429_then_streams(upstream: Any, provider: Any, wire: WireFormat) -> None:
    # Given an upstream that refuses the first request with a 429 and serves the second
    def script(ex: Exchange) -> None:
        if len(ex.server.requests) == 1:
            ex.reply(429, wire.error_body("Rate limit reached"), {"Retry-After": "0"})
            return
        answer(wire, "fine")(ex)

    server = upstream(script)
    model = provider(server.base_url)

    # When the producer's retry wrapper runs it
    source = with_retries(lambda stop: model.stream(PROMPT, stop), retries=2, base_delay_s=0.01, generation_id="g1")
    tokens, finish = split_finish(list(source(threading.Event())))

    # Then the second try's tokens come through
    assert (tokens, finish.finish_reason) == (["fine"], "stop")
    assert len(server.requests) == 2


# ---------------------------------------------------------------------------------------------------------------
# Failures.


@pytest.mark.parametrize(
    ("status", "headers", "retry_after_s"),
    [
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"Retry-After": "2"}, 2.0),
        (529, {"retry-after": "3"}, 3.0),
        (500, {}, None),
        (429, {}, None),
    ],
)
def test_429_and_5xx_are_retryable_with_the_upstream_retry_after(
    upstream: Any, provider: Any, wire: WireFormat, status: int, headers: dict[str, str], retry_after_s: float | None
) -> None:
    server = upstream(lambda ex: ex.reply(status, wire.error_body("Try again later"), headers))

    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), PROMPT)

    assert caught.value.code == "provider_unavailable"
    assert caught.value.retryable is True
    assert caught.value.retry_after_s == retry_after_s
    assert "Try again later" in str(caught.value)


@pytest.mark.parametrize("status", [400, 401])
def test_a_4xx_is_rejected_with_the_upstream_message_and_the_key_redacted(
    upstream: Any, provider: Any, wire: WireFormat, status: int
) -> None:
    server = upstream(lambda ex: ex.reply(status, wire.error_body(f"Incorrect API key provided: {wire.key}.")))

    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), PROMPT)

    assert caught.value.code == "provider_rejected"
    assert caught.value.retryable is False
    assert "Incorrect API key provided" in str(caught.value)
    assert wire.key not in str(caught.value)


def test_a_refused_connection_is_retryable(provider: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        run(provider(refused_base_url()), PROMPT)

    assert caught.value.code == "provider_unavailable"
    assert caught.value.retryable is True
    assert caught.value.retry_after_s is None


def test_a_read_timeout_before_the_first_token_is_retryable(upstream: Any, provider: Any) -> None:
    # Given an upstream that sends its headers, then nothing for longer than the model's timeout
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.wait_for_disconnect(timeout_s=3)

    server = upstream(script)

    # When the provider streams with a 0.3 s timeout
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url, timeout_s=0.3), PROMPT)

    # Then it gives up after the timeout, with a retryable error
    assert time.monotonic() - started < 2
    assert caught.value.code == "provider_unavailable"
    assert caught.value.retryable is True
    assert "timed out" in str(caught.value)


def test_a_connection_dropped_after_tokens_is_a_final_provider_error(
    upstream: Any, provider: Any, wire: WireFormat
) -> None:
    # Given an upstream that hangs up in the middle of a chunked body
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(*wire.opening, wire.token("Par"), wire.token("tial"))
        ex.wfile.write(b"40\r\ndata: {")
        ex.wfile.flush()
        ex.connection.shutdown(socket.SHUT_RDWR)

    server = upstream(script)
    received: list[Chunk] = []

    # When the provider streams
    with pytest.raises(ProviderError) as caught:
        for chunk in provider(server.base_url).stream(PROMPT, threading.Event()):
            received.append(chunk)

    # Then it fails for good after the tokens it had
    assert received == ["Par", "tial"]
    assert caught.value.code == "provider_error"
    assert caught.value.retryable is False


def test_a_json_answer_to_a_stream_request_is_rejected(upstream: Any, provider: Any) -> None:
    server = upstream(lambda ex: ex.reply(200, '{"id":"answer-1","content":[]}'))

    with pytest.raises(ProviderError) as caught:
        run(provider(server.base_url), PROMPT)

    assert caught.value.code == "provider_rejected"
    assert "expected an event stream" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------
# Cancellation.


def test_stop_while_waiting_for_the_next_token_closes_the_connection_at_once(
    upstream: Any, provider: Any, wire: WireFormat
) -> None:
    # Given an upstream that sends one token and then goes quiet
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(*wire.opening, wire.token("Hel"))
        ex.wait_for_disconnect()

    server = upstream(script)
    stop = threading.Event()

    # When stop is set while the provider is blocked reading
    timer = stop_later(stop, 0.3)
    started = time.monotonic()
    chunks = run(provider(server.base_url, timeout_s=10), PROMPT, stop)
    timer.join()

    # Then the iterator ends without an error, and the upstream sees the disconnect within a second
    assert chunks == ["Hel"]
    assert server.disconnected.wait(1.0)
    assert server.disconnected_at - started < 1.3
    assert time.monotonic() - started < 1.3
    assert no_watcher_left()


def test_stop_before_the_response_headers_closes_the_connection_at_once(upstream: Any, provider: Any) -> None:
    # Given an upstream that holds back even its response headers (a model still loading)
    server = upstream(lambda ex: ex.wait_for_disconnect())
    stop = threading.Event()

    # When stop is set while the provider waits for them
    timer = stop_later(stop, 0.3)
    started = time.monotonic()
    chunks = run(provider(server.base_url, timeout_s=10), PROMPT, stop)
    timer.join()

    # Then the iterator ends at once, and so does the connection
    assert chunks == []
    assert server.disconnected.wait(1.0)
    assert time.monotonic() - started < 1.3


def test_a_stop_already_set_sends_nothing(upstream: Any, provider: Any) -> None:
    server = upstream(lambda ex: ex.reply(500, "{}"))
    stop = threading.Event()
    stop.set()

    assert run(provider(server.base_url), PROMPT, stop) == []
    assert server.requests == []

"""Upstream connections are kept alive and pooled per upstream, and a cancel still closes only its own: against a
real local upstream over TLS (a self-signed certificate, trusted through SSL_CERT_FILE) that counts the TCP
connections it accepts and the TLS handshakes it completes."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.producer import Chunk, Finish
from tasks.providers import connections
from tasks.providers.connections import CANCEL_POLL_S, ConnectionGuard, client_for, close_clients, new_client
from tasks.providers.upstream import UpstreamProvider
from tests.support import holds_for, wait_for
from tests.support.scripted_upstream import Exchange, Script, ScriptedUpstream, run, split_finish, stop_later
from tests.support.wire_formats import ANTHROPIC, OPENAI

# A cancelled generation ends within a few polls of its guard; generous, for a loaded machine.
PROMPTLY_S = CANCEL_POLL_S + 0.45
ROOT = Path(__file__).resolve().parents[2]
# Generations at once in each round of the gevent run.
GENERATIONS = 20


def prompt(text: str) -> GenerationRequest:
    return GenerationRequest(model="openai", prompt=text)


def asked(ex: Exchange) -> str:
    content: str = ex.received.body["messages"][-1]["content"]
    return content


def answer(*texts: str, pause_s: float = 0.01) -> Script:
    def script(ex: Exchange) -> None:
        ex.start_stream()
        ex.send(*OPENAI.opening, *[OPENAI.token(text) for text in texts], *OPENAI.closing, pause_s=pause_s)
        ex.end_stream()

    return script


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    command += ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[Callable[..., ScriptedUpstream]]:
    """``create(script, alpn=["http/1.1"])``: a keep-alive upstream over TLS, stopped after the test."""
    servers: list[ScriptedUpstream] = []

    def create(script: Script, alpn: list[str] | None = None) -> ScriptedUpstream:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        context.set_alpn_protocols(alpn or ["http/1.1"])
        servers.append(ScriptedUpstream(script, keep_alive=True, tls=context))
        return servers[-1]

    yield create
    for server in servers:
        server.stop()


@pytest.fixture
def client(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """A client as the providers share, trusting the test certificate."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    client = new_client()
    yield client
    client.close()


@pytest.fixture
def shut_downs(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connections that a guard shuts down during the test, each noted once its socket is shut down."""
    noted: list[object] = []
    shut_down = connections._GuardedStream.shut_down

    def noting(stream: connections._GuardedStream) -> None:
        shut_down(stream)
        noted.append(stream)

    monkeypatch.setattr(connections._GuardedStream, "shut_down", noting)
    return noted


def model(base_url: str, client: httpx.Client, **fields: Any) -> UpstreamProvider:
    return OPENAI.provider(OPENAI.spec(base_url, **fields), client=client)


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``target`` running in a thread, and the list that gets its result, or its exception."""
    result: list[Any] = []

    def call() -> None:
        try:
            result.append(target())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result


# ---------------------------------------------------------------------------------------------------------------
# Reuse.


def test_sequential_generations_share_one_connection_and_one_handshake(tls_upstream: Any, client: httpx.Client) -> None:
    server = tls_upstream(lambda ex: answer(f"echo {asked(ex)}")(ex))
    provider = model(server.base_url, client)

    answers = [split_finish(run(provider, prompt(f"n{n}")))[0] for n in range(5)]

    assert answers == [[f"echo n{n}"] for n in range(5)]
    assert (server.connections, server.handshakes) == (1, 1)


def test_a_generation_stopped_once_its_answer_came_keeps_its_connection(
    tls_upstream: Any, client: httpx.Client, shut_downs: list[object]
) -> None:
    # Given generations whose consumer stops them as soon as their Finish comes, as the worker does when done
    server = tls_upstream(answer("ok"))
    provider = model(server.base_url, client)
    for _ in range(3):
        stop = threading.Event()
        stream = provider.stream(prompt("x"), stop)
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if isinstance(chunk, Finish):
                stop.set()
                holds_for(
                    lambda: not shut_downs,
                    window_s=CANCEL_POLL_S * 2,
                    interval_s=CANCEL_POLL_S / 5,
                    why="two polls of the guard (CANCEL_POLL_S): a guard still watching this request would have "
                    "shut its connection down on the stop by then",
                )
                break
        stream.close()
        assert split_finish(chunks)[0] == ["ok"]

    # Then they all ran on one connection
    assert (server.connections, server.handshakes) == (1, 1)


def test_concurrent_generations_open_as_many_connections_as_overlap_and_keep_them(
    tls_upstream: Any, client: httpx.Client
) -> None:
    # Given an upstream that answers no one until three requests are in flight at once
    barrier = threading.Barrier(3)

    def script(ex: Exchange) -> None:
        barrier.wait(timeout=5)
        answer("ok")(ex)

    server = tls_upstream(script)
    provider = model(server.base_url, client)

    # When three generations run at once, twice
    for _ in range(2):
        runs = [in_thread(lambda: run(provider, prompt("x"))) for _ in range(3)]
        for thread, _result in runs:
            thread.join(timeout=10)
        assert [split_finish(result[0])[0] for _thread, result in runs] == [["ok"]] * 3

    # Then the first three opened a connection each, and the next three reused them
    assert (server.connections, server.handshakes) == (3, 3)


def test_an_upstream_offering_http2_is_spoken_to_over_http11(tls_upstream: Any, client: httpx.Client) -> None:
    server = tls_upstream(answer("ok"), alpn=["h2", "http/1.1"])

    assert split_finish(run(model(server.base_url, client), prompt("x")))[0] == ["ok"]
    assert server.protocols == ["http/1.1"]


def test_models_of_one_upstream_share_its_client(upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an OpenAI and an Anthropic model on one upstream, and a model on another
    for wire in (OPENAI, ANTHROPIC):
        monkeypatch.setenv(wire.key_env, wire.key)

    def script(ex: Exchange) -> None:
        wire = OPENAI if ex.received.path == OPENAI.path else ANTHROPIC
        ex.start_stream()
        ex.send(*wire.opening, wire.token("ok"), *wire.closing)
        ex.end_stream()

    server = ScriptedUpstream(script, keep_alive=True)
    other = upstream(answer("ok"))
    try:
        gpt = OPENAI.provider(OPENAI.spec(server.base_url))
        claude = ANTHROPIC.provider(ANTHROPIC.spec(server.base_url + "/"))

        # When each streams, one after the other
        chunks = [run(gpt, prompt("x")), run(claude, prompt("x")), run(gpt, prompt("x"))]

        # Then they share one client, and one connection
        assert client_for(server.base_url) is client_for(server.base_url + "/") is not client_for(other.base_url)
        assert [split_finish(answer_)[0] for answer_ in chunks] == [["ok"]] * 3
        assert server.connections == 1
    finally:
        close_clients()
        server.stop()


def test_the_shared_client_keeps_no_cookies(upstream: Any, client: httpx.Client) -> None:
    # Given an upstream that sets a cookie on its first answer (a 429)
    def script(ex: Exchange) -> None:
        if len(ex.server.requests) == 1:
            ex.reply(429, OPENAI.error_body("Slow down"), {"Set-Cookie": "session=abc; Path=/"})
        else:
            answer("ok")(ex)

    server = upstream(script)
    provider = model(server.base_url, client)
    with pytest.raises(ProviderError):
        run(provider, prompt("x"))

    # When the next generation runs, of this model or another one on the upstream
    assert split_finish(run(provider, prompt("x")))[0] == ["ok"]

    # Then it does not send the cookie back: models of different accounts share the client
    assert "cookie" not in server.requests[1].headers


# ---------------------------------------------------------------------------------------------------------------
# Cancelling on shared connections.


def test_a_cancel_ends_only_its_own_stream(tls_upstream: Any, client: httpx.Client) -> None:
    # Given an upstream that streams one answer steadily and stalls the other after one token
    steady = [f"t{i} " for i in range(20)]

    def script(ex: Exchange) -> None:
        if asked(ex) == "stall":
            ex.start_stream()
            ex.send(*OPENAI.opening, OPENAI.token("first"))
            ex.wait_for_disconnect()
        else:
            answer(*steady, pause_s=0.03)(ex)

    server = tls_upstream(script)
    provider = model(server.base_url, client, timeout_s=10)
    stop = threading.Event()
    stalled: list[Chunk] = []
    steady_thread, steady_result = in_thread(lambda: run(provider, prompt("steady")))
    stalled_thread, _ = in_thread(lambda: stalled.extend(provider.stream(prompt("stall"), stop)))

    # When the stalled one is cancelled while it waits for its next token
    wait_for(lambda: stalled, timeout_s=5, message="the stalled generation's first token never came")
    cancelled_at = time.monotonic()
    stop.set()
    stalled_thread.join(timeout=5)

    # Then it ends at once with what it had, its connection is shut down, and the other answer is whole
    assert time.monotonic() - cancelled_at < PROMPTLY_S
    assert stalled == ["first"]
    assert server.disconnected.wait(1.0)
    steady_thread.join(timeout=10)
    tokens, finish = split_finish(steady_result[0])
    assert (tokens, finish.finish_reason) == (steady, "stop")

    # And the next generation runs on the connection that was not cancelled
    assert split_finish(run(provider, prompt("steady")))[0] == steady
    assert (server.connections, server.handshakes) == (2, 2)


def test_a_cancel_while_waiting_for_headers_on_a_reused_connection_ends_it_promptly(
    tls_upstream: Any, client: httpx.Client
) -> None:
    # Given a connection kept alive by a first generation, and an upstream that then holds back its headers
    def script(ex: Exchange) -> None:
        if asked(ex) == "hold":
            ex.wait_for_disconnect()
        else:
            answer("ok")(ex)

    server = tls_upstream(script)
    provider = model(server.base_url, client, timeout_s=10)
    assert split_finish(run(provider, prompt("first")))[0] == ["ok"]

    # When the next generation, on that connection, is cancelled while it waits for the headers
    stop = threading.Event()
    timer = stop_later(stop, 0.3)
    started = time.monotonic()
    chunks = run(provider, prompt("hold"), stop)
    timer.join()

    # Then it ends at once, and so does the connection
    assert chunks == []
    assert time.monotonic() - started < 0.3 + PROMPTLY_S
    assert server.disconnected.wait(1.0)
    assert server.connections == 1

    # And the generation after it works, on a new connection: the shut-down one is not lent again
    assert split_finish(run(provider, prompt("after")))[0] == ["ok"]
    assert (server.connections, server.handshakes) == (2, 2)


def test_a_connection_shut_down_after_its_response_ended_is_not_lent_again(
    tls_upstream: Any, client: httpx.Client, shut_downs: list[object]
) -> None:
    # Given a response read to its end whose connection a cancel shuts down before the response is closed (a cancel
    # racing the end of an answer)
    server = tls_upstream(answer("ok"))
    request = model(server.base_url, client).post({"messages": []}, {})
    stop = threading.Event()
    with ConnectionGuard(stop) as guard:
        with guard.claiming():
            response = client.send(request, stream=True)
        response.read()
        stop.set()
        # The guard shuts the connection down at its next poll of the stop (every CANCEL_POLL_S)
        wait_for(lambda: shut_downs, timeout_s=5, message="the guard did not shut the connection down")
    response.close()

    # When the next generation runs
    tokens = split_finish(run(model(server.base_url, client), prompt("x")))[0]

    # Then it gets a connection of its own
    assert tokens == ["ok"]
    assert (server.connections, server.handshakes) == (2, 2)


# ---------------------------------------------------------------------------------------------------------------
# Under gevent.


@pytest.mark.slow
def test_the_shared_client_serves_many_greenlets_at_once(certificate: tuple[Path, Path]) -> None:
    # Given the worker's setting: gevent's monkey-patching, and one shared client for the upstream
    command = [sys.executable, "-m", "tests.support.greenlet_upstream", *map(str, certificate), str(GENERATIONS)]

    # When rounds of generations stream at once, one of each round cancelled, then one waiting for its headers
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])

    # Then every answer is whole, each cancel ends at once, and connections are reused, never the cancelled ones
    assert report["whole"] == [True, True]
    assert max(report["cancel_s"]) < PROMPTLY_S
    first, second, last = report["connections"]
    assert first <= GENERATIONS + 1
    assert second <= GENERATIONS + 2
    assert last == second
    assert report["handshakes"] == last
    assert report["ok_after"] is True

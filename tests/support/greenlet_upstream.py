"""Many generations at once on one upstream's shared client, under gevent's monkey-patching as in the worker's
``--pool gevent``: ``python -m tests.support.greenlet_upstream CERT KEY GENERATIONS`` prints what it measured as JSON.

It must run in a process of its own, since it patches the standard library. Two rounds of GENERATIONS greenlets
stream from a keep-alive TLS upstream while one more, stalled after its first token, is cancelled; then a
generation waiting for its headers on a reused connection is cancelled."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from bridge.generation import GenerationRequest  # noqa: E402
from tasks.providers.connections import close_clients  # noqa: E402
from tests.support.scripted_upstream import Exchange, ScriptedUpstream, run  # noqa: E402
from tests.support.wire_formats import OPENAI  # noqa: E402

WORDS = [f"w{i} " for i in range(10)]


def script(ex: Exchange) -> None:
    asked = ex.received.body["messages"][-1]["content"]
    if asked == "hold":
        ex.wait_for_disconnect()
        return
    ex.start_stream()
    if asked == "stall":
        ex.send(*OPENAI.opening, OPENAI.token("first"))
        ex.wait_for_disconnect()
        return
    ex.send(*OPENAI.opening, *[OPENAI.token(word) for word in WORDS], *OPENAI.closing, pause_s=0.02)
    ex.end_stream()


def cancel_s(provider: Any, text: str, *, after_first_token: bool) -> float:
    """Run a generation and stop it after its first token, or after 0.2 s: seconds from the stop to its end."""
    stop = threading.Event()
    chunks: list[Any] = []
    greenlet = gevent.spawn(lambda: chunks.extend(provider.stream(GenerationRequest(model="m", prompt=text), stop)))
    deadline = time.monotonic() + (5 if after_first_token else 0.2)
    while time.monotonic() < deadline and not (after_first_token and chunks):
        gevent.sleep(0.01)
    stopped_at = time.monotonic()
    stop.set()
    greenlet.join(timeout=5)
    return time.monotonic() - stopped_at


def round_of(provider: Any, generations: int) -> tuple[bool, float]:
    """Whole answers and one cancelled stream at once: whether every answer was whole, and how long the cancelled
    one took to end."""
    answers = [gevent.spawn(run, provider, GenerationRequest(model="m", prompt="go")) for _ in range(generations)]
    stalled_s = cancel_s(provider, "stall", after_first_token=True)
    gevent.joinall(answers, timeout=30)
    whole = all(g.successful() and g.value[:-1] == WORDS and g.value[-1].finish_reason == "stop" for g in answers)
    return whole, stalled_s


def main(cert: str, key: str, generations: int) -> None:
    os.environ["SSL_CERT_FILE"] = cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ScriptedUpstream(script, keep_alive=True, tls=context)
    try:
        provider = OPENAI.provider(OPENAI.spec(server.base_url, timeout_s=10))
        first = round_of(provider, generations)
        after_first = server.connections
        second = round_of(provider, generations)
        after_second = server.connections
        hold_s = cancel_s(provider, "hold", after_first_token=False)
        report = {
            "whole": [first[0], second[0]],
            "cancel_s": [first[1], second[1], hold_s],
            "connections": [after_first, after_second, server.connections],
            "handshakes": server.handshakes,
            "ok_after": run(provider, GenerationRequest(model="m", prompt="go"))[:-1] == WORDS,
        }
    finally:
        close_clients()
        server.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

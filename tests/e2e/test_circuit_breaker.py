"""A model that keeps failing upstream is opened: fail fast with 503, or go to its fallback; then tried again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.circuit import Circuits
from tests.support.procfile import ROOT
from tests.support.sse import read_sse
from tests.support.stack import Stack, build_stack

pytestmark = pytest.mark.e2e

COOLDOWN_S = 3.0
MODELS = """
[models.flaky]
provider = "synthetic"
fallback = "echo"

[models.flaky-solo]
provider = "synthetic"
"""
# Fails every try before its first token (more tries than the worker makes): an upstream that is down.
DOWN = {"tokens_per_second": 1000, "fail_before_first": 10}


@pytest.fixture(scope="module")
def breaker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    models: Path = tmp_path_factory.mktemp("breaker-models") / "models.toml"
    models.write_text(MODELS)
    stack = build_stack(
        tmp_path_factory.mktemp("breaker-redis"),
        ROOT / "test-artifacts" / "breaker-logs",
        MODELS_FILE=str(models),
        CIRCUIT_FAILURES="2",
        CIRCUIT_COOLDOWN_S=str(COOLDOWN_S),
        PROVIDER_RETRIES="0",
        WEB_CONCURRENCY="1",
    )
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop_all()
        stack.stop_servers()


def _fail(stack: Stack, model: str) -> None:
    gen = stack.create(model=model, prompt="x", max_tokens=3, options=DOWN)
    events = read_sse(stack.url(gen["events_url"]), headers=stack.headers).events
    assert events[-1].event == "error" and events[-1].data["code"] == "provider_unavailable"


def test_a_model_that_keeps_failing_fails_fast_then_gets_a_trial_after_the_cool_down(breaker: Stack) -> None:
    # Given a model whose upstream failed twice in a row (the threshold)
    _fail(breaker, "flaky-solo")
    assert breaker.post("/v1/generations", {"model": "flaky-solo", "prompt": "x"}).status_code == 202
    _fail(breaker, "flaky-solo")
    # When another generation is asked of it
    refused = breaker.post("/v1/generations", {"model": "flaky-solo", "prompt": "x", "max_tokens": 3})
    # Then it is refused at once, with when to come back; readiness and metrics say which model is open
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_unavailable"
    assert 1 <= int(refused.headers["Retry-After"]) <= COOLDOWN_S
    ready = breaker.get("/readyz").json()
    assert ready["status"] == "degraded" and ready["checks"]["models"]["models"]["flaky-solo"]["circuit"] == "open"
    assert 'tokenbridge_model_circuit_open{model="flaky-solo"} 1.0' in httpx.get(breaker.url("/metrics")).text
    # And after the cool-down a trial goes through; its success closes the circuit
    time.sleep(COOLDOWN_S)  # a fixed wait, the scenario: the cool-down passes
    trial = breaker.create(model="flaky-solo", prompt="x", max_tokens=3, options={"tokens_per_second": 1000})
    assert read_sse(breaker.url(trial["events_url"]), headers=breaker.headers).events[-1].event == "done"
    again = breaker.post("/v1/generations", {"model": "flaky-solo", "prompt": "x", "max_tokens": 3})
    assert again.status_code == 202


def test_an_open_model_with_a_fallback_sends_new_generations_there(breaker: Stack) -> None:
    # Given a model with a fallback, opened by two failures in a row
    _fail(breaker, "flaky")
    _fail(breaker, "flaky")
    # When a generation is asked of it
    answer = breaker.post("/v1/generations", {"model": "flaky", "prompt": "served elsewhere"})
    # Then it runs on the fallback, and says so
    assert answer.status_code == 202
    body = answer.json()
    assert (body["model"], body["fallback_from"]) == ("echo", "flaky")
    events = read_sse(breaker.url(body["events_url"]), headers=breaker.headers).events
    assert "".join(e.data.get("content", "") for e in events) == "served elsewhere"


def test_sparse_failures_and_successes_keep_the_circuit_closed(breaker: Stack) -> None:
    circuits = Circuits(breaker.client(), threshold=2, cooldown_s=COOLDOWN_S)
    circuits.record("quiet", failed=True)
    circuits.record("quiet", failed=False)
    circuits.record("quiet", failed=True)
    state = circuits.state("quiet")
    assert not state.open and state.failures == 1

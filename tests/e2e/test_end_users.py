"""Abuse by one end user of a shared backend key: the per-user running cap and token budget stop that user, and the
key's other users go on. The real processes, on one Redis and on a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import wait_for
from tests.support.cluster import cluster_unavailable
from tests.support.procfile import ROOT
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["redis", "cluster"])
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One backend key for many end users, each allowed 2 running generations and 10 tokens a minute."""
    cluster = request.param == "cluster"
    if cluster and cluster_unavailable():
        pytest.skip(cluster_unavailable() or "")
    with running_stack(
        tmp_path_factory.mktemp("end-users-redis"),
        ROOT / "test-artifacts" / ("end-users-logs-cluster" if cluster else "end-users-logs"),
        processes=("web", "consumer"),
        cluster=cluster,
        MAX_RUNNING_PER_USER="2",
        TOKEN_BUDGET_PER_USER_PER_MINUTE="10",
        WEB_CONCURRENCY="1",
    ) as stack:
        yield stack


def _submit(stack: Stack, user: str, prompt: str = "x") -> Any:
    return stack.post("/v1/generations", {"model": "external", "prompt": prompt, "user": user})


def test_one_end_user_at_the_running_cap_is_stopped_and_another_is_not(shared: Stack) -> None:
    # Given two generations of alice running
    first = shared.create(model="external", prompt="a", user="alice")
    shared.create(model="external", prompt="b", user="alice")
    # When she asks for a third, Then she is told to wait
    third = _submit(shared, "alice")
    assert third.status_code == 429 and third.headers["Retry-After"] == "1"
    assert third.json()["error"]["code"] == "user_too_many_running"
    # And bob, behind the same key, is not
    assert _submit(shared, "bob").status_code == 202
    # And once one of alice's ends, she may start another
    shared.post(f"/v1/generations/{first['id']}/complete", {})
    wait_for(lambda: _submit(shared, "alice").status_code == 202, interval_s=0.1, message="alice's slot was kept")


def test_one_end_user_past_the_token_budget_is_stopped_and_another_is_not(shared: Stack) -> None:
    # Given carol's generation, which produces 12 tokens where she may have 10 a minute
    greedy = shared.create(model="external", prompt="a", user="carol")
    tokens = [f"w{i} " for i in range(12)]
    assert shared.post(f"/v1/generations/{greedy['id']}/tokens", {"index": 0, "tokens": tokens}).status_code == 202
    # Then it is ended with rate_limited, and she gets no new generation
    events = shared.events(greedy).events
    assert events[-1].event == "error" and events[-1].data["code"] == "rate_limited"
    refused = wait_for(
        lambda: (r := _submit(shared, "carol")).status_code == 429 and r, interval_s=0.1, message="carol went on"
    )
    assert refused.json()["error"]["code"] == "user_token_budget_exceeded" and int(refused.headers["Retry-After"]) > 0
    # And dave, behind the same key, reads a whole answer
    modest = shared.create(model="external", prompt="b", user="dave")
    shared.post(f"/v1/generations/{modest['id']}/tokens", {"index": 0, "tokens": ["fine ", "thanks"]})
    shared.post(f"/v1/generations/{modest['id']}/complete", {})
    assert shared.events(modest).events[-1].event == "done"
    assert _submit(shared, "dave").status_code == 202

"""Fault injection: each test builds its own stack and really kills, stops or restarts parts of it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.procfile import ROOT
from tests.support.stack import Stack, build_stack

pytestmark = [pytest.mark.slow, pytest.mark.faults]

RESULTS = ROOT / "test-artifacts" / "reliability.jsonl"


@pytest.fixture
def make_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def create(**env: str) -> Stack:
        logs = ROOT / "test-artifacts" / "faults" / request.node.name
        stack = build_stack(tmp_path_factory.mktemp("fault-redis"), logs, **env)
        stacks.append(stack)
        return stack

    yield create
    for stack in stacks:
        stack.stop_all()
        stack.stop_servers()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Append a measurement of this scenario to test-artifacts/reliability.jsonl (read by docs/RELIABILITY.md)."""

    def write(**values: Any) -> None:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps({"test": request.node.name, "at": time.time(), **values}) + "\n")

    return write

"""One stack for every end-to-end test of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.procfile import ROOT
from tests.stack import API_KEY, OTHER_KEY, Stack, build_stack

__all__ = ["API_KEY", "OTHER_KEY", "Stack"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = build_stack(tmp_path_factory.mktemp("e2e-redis"), ROOT / "test-artifacts" / "e2e-logs")
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop_all()
        stack.redis.stop()

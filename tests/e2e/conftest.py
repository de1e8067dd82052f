"""One stack for every end-to-end test of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream
from tests.procfile import ROOT
from tests.stack import API_KEY, OTHER_KEY, Stack, running_stack

__all__ = ["API_KEY", "OTHER_KEY", "Stack"]


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Stack]:
    models = tmp_path_factory.mktemp("models") / "models.toml"
    models.write_text(
        f"""
[models.fake-gpt]
provider = "openai"
base_url = "{upstream.base_url}"
model = "gpt-upstream"
api_key_env = "FAKE_OPENAI_KEY"
max_tokens = 64

[models.fake-claude]
provider = "anthropic"
base_url = "{upstream.base_url}"
model = "claude-upstream"
api_key_env = "FAKE_ANTHROPIC_KEY"
"""
    )
    with running_stack(
        tmp_path_factory.mktemp("e2e-redis"),
        ROOT / "test-artifacts" / "e2e-logs",
        MODELS_FILE=str(models),
        FAKE_OPENAI_KEY="sk-openai-secret",
        FAKE_ANTHROPIC_KEY="sk-ant-secret",
    ) as stack:
        yield stack

"""One stack for every end-to-end test of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import cluster_unavailable
from tests.support.fake_upstream import FakeUpstream
from tests.support.procfile import ROOT
from tests.support.stack import API_KEY, OTHER_KEY, Stack, running_stack

__all__ = ["API_KEY", "OTHER_KEY", "Stack"]


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="session", params=["redis", "cluster"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[Stack]:
    """The stack every end-to-end test runs against twice: on one Redis, and on a 3-master Redis Cluster
    (with a standalone Redis as Celery's broker) -- the same code, configured differently."""
    cluster = request.param == "cluster"
    if cluster and cluster_unavailable():
        pytest.skip(cluster_unavailable() or "")
    models = tmp_path_factory.mktemp("models") / "models.toml"
    models.write_text(
        f"""
[models.fake-gpt]
provider = "openai"
base_url = "{upstream.base_url}"
model = "gpt-upstream"
api_key_env = "FAKE_OPENAI_KEY"
max_tokens = 64

[models.fake-gpt-cached]
provider = "openai"
base_url = "{upstream.base_url}"
model = "gpt-upstream"
api_key_env = "FAKE_OPENAI_KEY"
cache_ttl_s = 60

[models.fake-claude]
provider = "anthropic"
base_url = "{upstream.base_url}"
model = "claude-upstream"
api_key_env = "FAKE_ANTHROPIC_KEY"
"""
    )
    with running_stack(
        tmp_path_factory.mktemp("e2e-redis"),
        ROOT / "test-artifacts" / ("e2e-logs-cluster" if cluster else "e2e-logs"),
        cluster=cluster,
        MODELS_FILE=str(models),
        FAKE_OPENAI_KEY="sk-openai-secret",
        FAKE_ANTHROPIC_KEY="sk-ant-secret",
        # Every test of the session uses this stack with one key: more than the default 600 requests a minute.
        # (The limit itself is tested on stacks of their own: test_security, test_openai_models.)
        RATE_LIMIT="20000/minute",
        # A Durable Streams long-poll that finds nothing answers 204 after this long (20 s by default).
        DURABLE_STREAMS_LONG_POLL_S="1",
    ) as stack:
        yield stack

"""The whole stack on a Redis that requires a password and an ACL user without dangerous commands."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.procfile import ROOT
from tests.support.stack import Stack, build_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The least-privilege rule documented in the README: every key and channel, every ordinary command, none of
# the dangerous ones but the client name and the health checks' INFO.
ACL = ["~*", "&*", "+@all", "-@dangerous", "+client|setname", "+info", "+ping"]


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = build_stack(tmp_path_factory.mktemp("acl-redis"), ROOT / "test-artifacts" / "acl-logs")
    server = stack.redis
    server.stop()
    server.extra_args = ["--user", "default", "off", "--user", "tokenbridge", "on", ">s3cret pass", *ACL]
    server.start(timeout_s=10, probe_url=f"redis://tokenbridge:s3cret%20pass@127.0.0.1:{server.port}/0")
    url = f"redis://tokenbridge:s3cret%20pass@127.0.0.1:{server.port}/0"
    stack.env["REDIS_URL"] = url
    try:
        for name in ("web", "worker", "consumer"):
            stack.start(name)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop_all()
        server.stop()


def test_the_pipeline_works_with_a_password_and_a_restricted_acl_user(locked: Stack) -> None:
    gen = locked.create(model="echo", prompt="through a locked-down Redis")
    events = locked.events(gen).events
    assert "".join(e.data["content"] for e in events if e.event == "token") == "through a locked-down Redis"
    anonymous = redis.Redis(port=locked.redis.port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()

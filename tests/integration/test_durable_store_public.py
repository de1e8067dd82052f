"""DURABLE_STREAMS_PUBLIC: requests without credentials under /v1/stream/ (the conformance suite's) may use streams
that belong to nobody, and nothing else; off, they get 401. The web app on a real Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from app import create_app
from bridge.settings import Settings

KEY = {"Authorization": "Bearer test-key"}
TEXT = {"Content-Type": "text/plain"}


@pytest.mark.parametrize("public", [True, False])
def test_streams_without_credentials_only_when_public_and_only_public_ones(
    make_settings: Callable[..., Settings], r: redis.Redis, public: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given web with DURABLE_STREAMS_PUBLIC on or off, and a stream of an API key's
    settings = make_settings(durable_streams_public=public, rate_limit="")
    client = create_app(settings).test_client()
    # (loud at start while it is on)
    assert ("DURABLE_STREAMS_PUBLIC is set" in capsys.readouterr().err) is public
    assert client.put("/v1/stream/keys-own", data=b"secret", headers={**KEY, **TEXT}).status_code == 201
    # When a request without credentials creates, appends to and reads a stream
    created = client.put("/v1/stream/open", data=b"hello ", headers=TEXT)
    if not public:
        # Then, off, it is refused like every /v1 request without a key
        assert created.status_code == 401
        assert client.get("/v1/stream/keys-own").status_code == 401
        return
    assert created.status_code == 201
    assert client.post("/v1/stream/open", data=b"world", headers=TEXT).status_code == 204
    # Then it reads what it wrote, and the key's stream, tokenbridge's own streams and another's are out of reach
    assert client.get("/v1/stream/open?offset=-1").data == b"hello world"
    assert client.get("/v1/stream/keys-own").status_code == 404
    assert client.post("/v1/stream/keys-own", data=b"x", headers=TEXT).status_code == 404
    assert client.get("/v1/stream/generations/gen_x").status_code == 401
    assert client.put("/v1/stream/generations/gen_x").status_code == 405
    # And a key's owner does not see the public stream as its own either
    assert client.get("/v1/stream/open", headers=KEY).status_code == 404
    assert client.delete("/v1/stream/open").status_code == 204

"""What the model gets is what the user sent, and end users are told apart: submissions through the web app (Flask's
test client) on a real Redis, single and cluster, with a consumer committing what the producers write.

The abuse cases: two end users behind one API key, one of them stopped by the per-user running cap or token budget,
the other not."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from flask.testing import FlaskClient

from app import create_app
from bridge import keys
from bridge.settings import Settings
from tests.support import wait_for
from tests.support.cluster import EmbeddedCluster, cluster_unavailable
from workers.consumer import ConsumerWorker
from workers.processors import default_processors

KEY = {"Authorization": "Bearer test-key"}
KEY_NAME = f"key-{hashlib.sha256(b'test-key').hexdigest()[:10]}"  # a bare key is named after its digest
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

MODELS = """
[models.gpt]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.claude]
provider = "anthropic"
base_url = "http://127.0.0.1:9/v1"
drop_params = ["seed", "detail"]
"""


@dataclass
class Web:
    client: FlaskClient
    redis: redis.Redis
    settings: Settings
    consumer: ConsumerWorker

    def post(self, path: str, body: Any, **headers: str) -> Any:
        return self.client.post(path, json=body, headers={**KEY, **headers})

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.post("/v1/generations", body)
        assert response.status_code == 202, response.get_json()
        created: dict[str, Any] = response.get_json()
        return created

    def commit(self, condition: Callable[[], object], message: str) -> None:
        """Run the consumer until ``condition`` holds."""
        wait_for(condition, step=lambda: self.consumer.run_once(block_ms=20), message=message)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A 3-master cluster of this module's own (the session's is parametrised by server binary)."""
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    started = EmbeddedCluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


@pytest.fixture(params=["redis", "cluster"])
def make_web(
    request: pytest.FixtureRequest, tmp_path: Path, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., Web]]:
    """``create(**settings)``: the web app on a single Redis, then on a cluster (where each check is a step of its
    own), with a consumer on the same Redis."""
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    made: list[Web] = []

    def create(**overrides: Any) -> Web:
        base = make_settings(models_file=str(models), celery_broker_url="memory://", rate_limit="", **overrides)
        if request.param == "cluster":
            cluster: EmbeddedCluster = request.getfixturevalue("cluster")
            settings = base.model_copy(update={"redis_url": cluster.url, "redis_cluster": True})
            client: redis.Redis = redis.RedisCluster.from_url(cluster.url, decode_responses=True)  # type: ignore[assignment]
            client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)  # type: ignore[call-arg]
        else:
            settings = base
            client = redis.Redis.from_url(settings.resolved_redis_url, decode_responses=True)
            client.flushall()
        consumer = ConsumerWorker(client, settings, default_processors(client, models_file=str(models)))
        made.append(Web(create_app(settings).test_client(), client, settings, consumer))
        return made[-1]

    yield create
    for web in made:
        web.consumer.ownership.hand_back()
        web.redis.close()


# ---------------------------------------------------------------------------------------------------------------
# Abuse: two end users behind one key.


def test_an_end_user_at_its_running_cap_is_stopped_and_another_user_of_the_key_is_not(
    make_web: Callable[..., Web],
) -> None:
    # Given a key whose end users may each run two generations, and two of alice's running
    web = make_web(max_running_per_user=2, max_running_per_key=10)
    first = web.create(model="external", prompt="a", user="alice")
    web.create(model="external", prompt="b", user="alice")
    # When alice asks for a third
    third = web.post("/v1/generations", {"model": "external", "prompt": "c", "user": "alice"})
    # Then she is told to wait, and bob, and a request for no end user, are not
    assert third.status_code == 429 and third.headers["Retry-After"] == "1"
    assert third.get_json()["error"]["code"] == "user_too_many_running"
    web.create(model="external", prompt="d", user="bob")
    web.create(model="external", prompt="e")
    # And once one of alice's ends (its end committed), she may start another
    assert web.post(f"/v1/generations/{first['id']}/complete", {}).status_code == 202
    web.commit(lambda: not web.redis.zscore(keys.user_running(KEY_NAME, "alice"), first["id"]), "slot kept")
    web.create(model="external", prompt="f", user="alice")


def test_the_keys_cap_still_holds_over_all_its_users(make_web: Callable[..., Web]) -> None:
    web = make_web(max_running_per_user=2, max_running_per_key=3)
    for user in ("alice", "bob", "carol"):
        web.create(model="external", prompt="x", user=user)
    refused = web.post("/v1/generations", {"model": "external", "prompt": "x", "user": "dave"})
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "too_many_running"
    # Nothing of the refused one was counted against dave
    assert web.redis.zcard(keys.user_running(KEY_NAME, "dave")) == 0


def _feed(web: Web, generation_id: str, count: int) -> None:
    tokens = [f"w{i} " for i in range(count)]
    response = web.post(f"/v1/generations/{generation_id}/tokens", {"index": 0, "tokens": tokens})
    assert response.status_code == 202, response.get_json()


def test_an_end_user_past_its_token_budget_is_stopped_and_another_user_of_the_key_is_not(
    make_web: Callable[..., Web],
) -> None:
    # Given a key whose end users may each have 10 tokens produced a minute
    web = make_web(token_budget_per_user_per_minute=10)
    # When alice's generation produces 12 tokens (and has not ended)
    greedy = web.create(model="external", prompt="a", user="alice")
    _feed(web, greedy["id"], 12)
    # Then the consumer ends it with rate_limited, and alice's next request is refused until the minute is over
    web.commit(lambda: web.redis.hget(keys.gen_meta(greedy["id"]), "status") == "failed", "alice's generation went on")
    record = web.client.get(f"/v1/generations/{greedy['id']}", headers=KEY).get_json()
    assert record["error"]["code"] == "rate_limited" and "end user" in record["error"]["message"]
    refused = web.post("/v1/generations", {"model": "echo", "prompt": "more", "user": "alice"})
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "user_token_budget_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    # And bob, with the same key, goes on: his generation runs to its end
    modest = web.create(model="external", prompt="b", user="bob")
    _feed(web, modest["id"], 5)
    web.post(f"/v1/generations/{modest['id']}/complete", {})
    web.commit(lambda: web.redis.hget(keys.gen_meta(modest["id"]), "status") == "completed", "bob's was ended")
    web.create(model="echo", prompt="again", user="bob")


# ---------------------------------------------------------------------------------------------------------------
# The end user recorded; fields refused, dropped, and images held to their limits.


def test_the_end_user_is_recorded_on_the_generation_and_a_long_one_by_its_digest(make_web: Callable[..., Web]) -> None:
    web = make_web()
    short = web.create(model="echo", prompt="x", user="alice@example.com")
    long_user = "u" * 100
    long = web.create(model="echo", prompt="x", user=long_user)
    assert web.client.get(f"/v1/generations/{short['id']}", headers=KEY).get_json()["user"] == "alice@example.com"
    recorded = web.client.get(f"/v1/generations/{long['id']}", headers=KEY).get_json()["user"]
    assert recorded.startswith("sha256:") and len(recorded) == 47
    # :meta stays a small hash; the whole user is in the stored request
    meta = web.redis.hgetall(keys.gen_meta(long["id"]))
    assert all(len(value.encode()) <= 64 for value in meta.values())
    assert orjson.loads(web.redis.get(keys.gen_request(long["id"])))["user"] == long_user
    unnamed = web.create(model="echo", prompt="x")
    assert web.client.get(f"/v1/generations/{unnamed['id']}", headers=KEY).get_json()["user"] is None


def test_a_field_the_model_cannot_take_is_refused_by_name_or_dropped_with_a_header(
    make_web: Callable[..., Web],
) -> None:
    web = make_web()
    # Refused: presence_penalty is not a field Anthropic takes, nor does the registry entry drop it
    refused = web.post("/v1/generations", {"model": "claude", "prompt": "x", "presence_penalty": 1, "top_k": 5})
    assert refused.status_code == 422
    assert [(d["field"], d["type"]) for d in refused.get_json()["error"]["details"]] == [
        ("presence_penalty", "unsupported_by_model")
    ]
    # Dropped: the entry's drop_params names seed; the answer names it, and the stored request is without it
    image = {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}}
    content = [{"type": "text", "text": "What is it?"}, image]
    response = web.post(
        "/v1/generations", {"model": "claude", "messages": [{"role": "user", "content": content}], "seed": 3}
    )
    assert response.status_code == 202 and response.headers["x-tokenbridge-dropped-params"] == "seed, detail"
    stored = orjson.loads(web.redis.get(keys.gen_request(response.get_json()["id"])))
    assert "seed" not in stored
    assert stored["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": PIXEL}}
    # Nothing dropped: no header
    assert "x-tokenbridge-dropped-params" not in web.post("/v1/generations", {"model": "gpt", "prompt": "x"}).headers


def test_a_stand_in_model_refuses_images_and_the_fields_are_named_as_the_request_has_them(
    make_web: Callable[..., Web],
) -> None:
    web = make_web()
    content = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    echo = web.post("/v1/generations", {"model": "echo", "messages": [{"role": "user", "content": content}]})
    assert echo.status_code == 422
    assert [d["field"] for d in echo.get_json()["error"]["details"]] == ["messages.0.content.1"]
    audio = [{"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]
    chat = web.post("/v1/chat/completions", {"model": "gpt", "messages": [{"role": "user", "content": audio}]})
    error = chat.get_json()["error"]
    assert chat.status_code == 422 and error["param"] == "messages.0.content.1.type"
    assert error["code"] == "validation_failed" and "'input_audio'" in error["message"]


def test_inline_images_are_held_to_their_size_and_count(make_web: Callable[..., Web]) -> None:
    web = make_web(max_image_bytes=40, max_images_per_request=2)
    image = {"type": "image_url", "image_url": {"url": PIXEL}}  # 70 bytes once decoded
    by_url = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    large = web.post("/v1/generations", {"model": "gpt", "messages": [{"role": "user", "content": [by_url, image]}]})
    assert large.status_code == 413
    error = large.get_json()["error"]
    assert error["code"] == "image_too_large"
    assert [d["field"] for d in error["details"]] == ["messages.0.content.1.image_url.url"]
    many = web.post("/v1/generations", {"model": "gpt", "messages": [{"role": "user", "content": [by_url] * 3}]})
    assert many.status_code == 422 and many.get_json()["error"]["details"][0]["type"] == "too_many_images"
    fine = web.post("/v1/generations", {"model": "gpt", "messages": [{"role": "user", "content": [by_url] * 2}]})
    assert fine.status_code == 202

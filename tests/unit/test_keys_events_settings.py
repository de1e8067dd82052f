from __future__ import annotations

import ssl
import subprocess
import sys

import orjson
import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from bridge import keys
from bridge.events import (
    DATA_MODELS,
    FINISHED_STATUSES,
    TERMINAL_EVENTS,
    Event,
    GenerationStatus,
    decode_out,
    decode_raw,
    encode_out,
)
from bridge.settings import Settings


def test_every_key_of_a_generation_shares_one_cluster_slot() -> None:
    gid = "gen_0123abcd"
    slots = {key_slot(key.encode()) for key in keys.generation_keys(gid)}
    assert len(slots) == 1
    assert all(f"{{{gid}}}" in key for key in keys.generation_keys(gid))


def test_session_keys_share_one_slot_and_generation_id_is_recovered_from_a_key() -> None:
    assert key_slot(keys.session_index("s1").encode()) == key_slot(keys.session_out("s1").encode())
    assert key_slot(keys.session_generations("s1").encode()) == key_slot(keys.session_out("s1").encode())
    assert key_slot(keys.session_copied("s1").encode()) == key_slot(keys.session_out("s1").encode())
    assert keys.generation_id_from_key(keys.gen_raw("gen_x.y:z")) == "gen_x.y:z"


def test_raw_entry_is_read_with_its_attempt() -> None:
    as_read = {"type": "token", "attempt": "3", "data": orjson.dumps({"content": "hé ", "ts": 1.5}).decode()}
    event = decode_raw("1-0", as_read)
    assert (event.id, event.type, event.attempt, event.data) == ("1-0", "token", 3, {"content": "hé ", "ts": 1.5})
    assert not event.terminal


def test_out_entry_carries_the_json_a_client_receives() -> None:
    out = encode_out(Event(id="5-1", type="done", data={"seq": 4, "finish_reason": "stop", "usage": {}}))
    event = decode_out("5-1", {k: v.decode() if isinstance(v, bytes) else v for k, v in out.items()})
    assert event.terminal
    assert orjson.loads(event.data) == {"seq": 4, "finish_reason": "stop", "usage": {}}


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("token", {"seq": 0, "content": "a", "ts": 1.0}),
        ("restart", {"seq": 1, "reason": "worker_lost"}),
        ("done", {"seq": 2, "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
        ("error", {"seq": 3, "code": "provider_error", "message": "boom"}),
        ("cancelled", {"seq": 4}),
    ],
)
def test_event_schema_accepts_each_documented_event(event: str, data: dict[str, object]) -> None:
    assert DATA_MODELS[event].model_validate(data).seq == data["seq"]


def test_event_schema_rejects_a_token_without_content() -> None:
    with pytest.raises(ValidationError):
        DATA_MODELS["token"].model_validate({"seq": 0, "ts": 1.0})


def test_terminal_events_are_exactly_done_error_cancelled() -> None:
    assert frozenset({"done", "error", "cancelled"}) == TERMINAL_EVENTS


def test_finished_statuses_match_the_status_strings_in_redis() -> None:
    assert {"completed", "failed", "cancelled"} == {str(status) for status in FINISHED_STATUSES}
    assert "failed" in FINISHED_STATUSES and "running" not in FINISHED_STATUSES
    assert [status.finished for status in GenerationStatus] == [False, False, True, True, True]


def test_settings_fall_back_to_seed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss/word")
    monkeypatch.setenv("REDIS_DB", "2")
    settings = Settings()
    assert settings.resolved_redis_url == "redis://:p%40ss%2Fword@cache.internal:6380/2"
    assert settings.broker_url == settings.resolved_redis_url


def test_redis_url_wins_and_broker_can_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://r.example:6390/1")
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    settings = Settings()
    assert settings.resolved_redis_url == "rediss://r.example:6390/1"
    assert settings.broker_url.startswith("amqp://")


def test_settings_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "REDIS_STREAM_MAX_LENGTH", "REDIS_STREAM_RETENTION_MS", "REDIS_CONSUMER_GROUP", "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.port == 8000
    assert settings.redis_stream_max_length == 100_000
    assert settings.redis_stream_retention_ms == 86_400_000
    assert settings.redis_consumer_group == "llm:processors"
    assert settings.log_format == "json"


def test_api_keys_are_split_and_trimmed() -> None:
    assert Settings(api_keys=" a , b,,ops:c ").api_key_set == frozenset({"a", "b", "ops:c"})


def test_claim_idle_time_must_outlast_heartbeats() -> None:
    with pytest.raises(ValidationError):
        Settings(consumer_heartbeat_ms=1000, consumer_claim_idle_ms=2000)


def test_one_work_shard_is_the_plain_work_stream() -> None:
    assert keys.work_streams(1) == ("llm:work",)
    assert keys.work_stream_for("gen_anything", 1) == "llm:work"


def test_work_shards_cover_the_slot_range_evenly_and_stay_put() -> None:
    # Given 16 shards
    shards = keys.work_streams(16)
    # Then shard i lies in the i-th sixteenth of the slots (any 3 contiguous node ranges each get some)
    assert [key_slot(s.encode()) * 16 // 16384 for s in shards] == list(range(16))
    # And a generation always maps to the same shard
    assert keys.work_stream_for("gen_abc", 16) == keys.work_stream_for("gen_abc", 16) in shards


def test_a_cluster_needs_a_broker_of_its_own() -> None:
    with pytest.raises(ValidationError, match="CELERY_BROKER_URL"):
        Settings(redis_url="redis://10.0.0.1:7000", redis_cluster=True)
    settings = Settings(redis_url="redis://10.0.0.1:7000", redis_cluster=True, celery_broker_url="amqp://b//")
    assert settings.broker_url == "amqp://b//"
    assert settings.work_shard_count == 16
    assert Settings(redis_url="redis://10.0.0.1:7000").work_shard_count == 1
    assert Settings(work_shards=4).work_shard_count == 4


def test_rate_limits_share_the_streams_redis_cluster_included() -> None:
    assert Settings(redis_url="redis://h:1/0").redis.rate_limit_storage == ("redis://h:1/0", {})
    cluster = Settings(redis_url="redis://:pw@h:7000/0", redis_cluster=True, celery_broker_url="amqp://b//")
    assert cluster.redis.rate_limit_storage == ("redis+cluster://:pw@h:7000", {})
    tls = Settings(redis_url="rediss://h:7000", redis_cluster=True, celery_broker_url="amqp://b//")
    assert tls.redis.rate_limit_storage == ("redis+cluster://h:7000", {"ssl": True})


def test_the_seed_designs_poll_settings_are_honoured_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_POLL_DELAY", "0.25")
    monkeypatch.setenv("CONSUMER_POLL_TIMEOUT", "2")
    settings = Settings()
    assert (settings.hub_block_ms, settings.consumer_block_ms) == (250, 2000)
    assert settings.order_problems() == []


def test_a_tokenbridge_name_wins_over_its_seed_name_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_POLL_DELAY", "0.25")
    monkeypatch.setenv("HUB_BLOCK_MS", "700")
    settings = Settings()
    assert settings.hub_block_ms == 700
    assert settings.order_problems() == ["REDIS_POLL_DELAY is ignored: HUB_BLOCK_MS is set too, and wins."]


def test_seed_settings_without_meaning_here_are_named_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONSUMERS_PER_INSTANCE", "4")
    monkeypatch.setenv("CONNECTION_CLEANUP_INTERVAL", "30")
    problems = Settings().order_problems()
    assert [p.split(" ", 1)[0] for p in problems] == ["MAX_CONSUMERS_PER_INSTANCE", "CONNECTION_CLEANUP_INTERVAL"]


# -- TLS of Celery's broker ------------------------------------------------------------------------


def _celery_and_flower_tls(settings: Settings) -> list[object]:
    """The certificate check of each connection Celery's broker gets: the worker's and Flower's Celery app, a
    sending app (web, consumer), kombu's connection, and Flower's broker view (queue lengths)."""
    from flower.utils.broker import Broker

    from bridge.task_queue import celery_client_options
    from tasks.celery_app import create_celery

    app = create_celery(settings)
    broker = Broker(
        app.conf.broker_url,
        broker_use_ssl=app.conf.broker_use_ssl,
        broker_options=app.conf.broker_transport_options,
    )
    with app.connection_for_write() as connection:
        kombu_ssl = connection.ssl
    return [
        app.conf.broker_use_ssl["ssl_cert_reqs"],
        celery_client_options(settings)["broker_use_ssl"]["ssl_cert_reqs"],
        kombu_ssl["ssl_cert_reqs"],
        broker.redis.connection_pool.connection_kwargs["ssl_cert_reqs"],
    ]


def test_redis_ssl_cert_reqs_reaches_a_broker_on_a_second_tls_redis() -> None:
    # Given the streams and Celery's broker on two managed Redis over TLS with self-signed certificates
    settings = Settings(
        redis_url="rediss://:pw@streams:6380/0",
        celery_broker_url="rediss://:pw@broker:6380/0",
        redis_ssl_cert_reqs="none",
    )
    # Then REDIS_SSL_CERT_REQS applies to both URLs, and every connection to the broker accepts the certificate
    assert settings.resolved_redis_url == "rediss://:pw@streams:6380/0?ssl_cert_reqs=none"
    assert settings.broker_url == "rediss://:pw@broker:6380/0?ssl_cert_reqs=none"
    assert _celery_and_flower_tls(settings) == [ssl.CERT_NONE] * 4


def test_a_tls_broker_verifies_its_certificate_unless_told_otherwise() -> None:
    broker = "rediss://broker:6380/0"
    # Nothing said: verified, like the streams' connections (kombu alone would accept any certificate).
    assert _celery_and_flower_tls(Settings(celery_broker_url=broker)) == [ssl.CERT_REQUIRED] * 4
    # The URL's own parameters win over the setting, and a CA file is passed on.
    own = Settings(
        celery_broker_url=f"{broker}?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem", redis_ssl_cert_reqs="none"
    )
    assert _celery_and_flower_tls(own) == [ssl.CERT_REQUIRED] * 4
    from bridge.task_queue import broker_ssl_options

    assert broker_ssl_options(own) == {
        "broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    }
    # No TLS, no TLS options; a value kombu would ignore stops the process at start.
    assert broker_ssl_options(Settings(redis_url="redis://h:1/0", redis_ssl_cert_reqs="none")) == {}
    assert broker_ssl_options(Settings(celery_broker_url="amqp://b//")) == {}
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        broker_ssl_options(Settings(celery_broker_url=f"{broker}?ssl_cert_reqs=maybe"))


def test_the_celery_worker_reads_its_settings_once() -> None:
    # Given a worker process that counts every reading of the environment (a process of its own: importing
    # ``tasks`` makes the Celery app)
    script = """
from bridge.settings import Settings
readings = []
original = Settings.__init__
def counted(self, **values):
    original(self, **values)
    readings.append(self)
Settings.__init__ = counted
import tasks
from tasks import generation
# When its task asks for its settings
settings = generation._settings()
# Then they were read once: the Celery app's
print(len(readings), settings is tasks.celery_app.conf.tokenbridge_settings)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["1", "True"]

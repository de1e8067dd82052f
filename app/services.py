"""What the web process holds: settings, Redis clients, the hub, the Celery client, the authenticator."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app

from app.auth import Authenticator
from app.hub import CLIENT_QUEUE_SIZE, HUB_READ_COUNT, Hub
from app.presence import Presence
from bridge import keys
from bridge.circuit import Circuits
from bridge.connections import is_cluster, redis_client, require_redis_version
from bridge.layout import require_layout_version
from bridge.memory import MemoryGuard
from bridge.models import ModelSpec, load_registry
from bridge.readers import stream_reader
from bridge.sessions import SessionResolver
from bridge.settings import Settings
from bridge.task_queue import celery_client_options


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    hub: Hub
    celery: Celery
    auth: Authenticator
    models: dict[str, ModelSpec]
    presence: Presence
    circuits: Circuits
    memory: MemoryGuard

    @classmethod
    def build(cls, settings: Settings) -> Services:
        commands = redis_client(settings.redis, max_connections=64, client_name="tokenbridge-web")
        require_redis_version(commands)  # a Redis that is too old stops the gunicorn worker, hence web, at start
        require_layout_version(commands)  # so does one that holds another layout of keys
        hub = Hub(
            stream_reader(commands, sweep_s=settings.hub_block_ms / 1000, hints=keys.OUT_HINTS),
            block_ms=settings.hub_block_ms,
            # Deprecated settings, honoured while they are read (bridge/settings/deprecated.py).
            count=settings.hub_read_count or HUB_READ_COUNT,
            queue_size=settings.client_queue_size or CLIENT_QUEUE_SIZE,
            sessions=SessionResolver(commands),
        )
        celery = Celery("tokenbridge-web", broker=settings.broker_url)
        celery.conf.update(celery_client_options(settings))
        return cls(
            settings=settings,
            redis=commands,
            hub=hub,
            celery=celery,
            auth=Authenticator(settings),
            models=load_registry(settings.models_file),
            presence=Presence(commands, settings.presence_interval_s),
            circuits=Circuits(commands, threshold=settings.circuit_failures, cooldown_s=settings.circuit_cooldown_s),
            memory=MemoryGuard(commands, headroom=settings.redis_memory_headroom),
        )

    @property
    def rate_limit_storage_options(self) -> dict[str, object]:
        """Flask-Limiter's storage options: on a single Redis, this process' own bounded pool, so that
        ``REDIS_MAX_CONNECTIONS`` bounds both and a burst waits for a connection instead of skipping the limit."""
        if is_cluster(self.redis):
            return self.settings.redis.rate_limit_storage[1]
        return {"connection_pool": self.redis.connection_pool}


def services() -> Services:
    result: Services = current_app.extensions["tokenbridge"]
    return result

"""Health alerts to a webhook: one consumer at a time checks the pipeline and posts to ALERT_WEBHOOK_URL
when it turns unhealthy and when it recovers — once per change, not at every check."""

from __future__ import annotations

import logging
import time

import httpx
import orjson
import redis

from bridge import keys
from bridge.settings import Settings
from bridge.streams import work_backlog

logger = logging.getLogger(__name__)

LEADER = keys.ALERTS_LEADER
STATE = keys.ALERTS_STATE


def pipeline_problems(client: redis.Redis, settings: Settings) -> list[str]:
    """What is wrong with the pipeline as a whole (empty when healthy)."""
    # (No consumer alive cannot be seen from a consumer: that one is the Prometheus alert's job.)
    problems = []
    _, lag, age_s = work_backlog(client, settings.redis_consumer_group, settings.work_shard_count)
    if lag is not None and lag > settings.ready_max_lag:
        problems.append(f"{lag} generations wait for a consumer")
    if age_s > settings.ready_max_pending_age_s:
        problems.append(f"a generation has been running for {age_s:.0f} s")
    return problems


class Alerter:
    """Runs inside consumer housekeeping; only the elected consumer checks and posts."""

    def __init__(self, client: redis.Redis, settings: Settings, name: str, *, http: httpx.Client | None = None) -> None:
        self.client = client
        self.settings = settings
        self.name = name
        self.http = http
        self._next_check = 0.0

    def tick(self) -> None:
        if not self.settings.alert_webhook_url or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.settings.alert_interval_s
        lease_ms = int(self.settings.alert_interval_s * 3000)
        leader = self.client.set(LEADER, self.name, nx=True, px=lease_ms) or self.client.get(LEADER) == self.name
        if not leader:
            return
        self.client.pexpire(LEADER, lease_ms)
        problems = pipeline_problems(self.client, self.settings)
        status = "unhealthy" if problems else "healthy"
        previous = self.client.getset(STATE, status) or "healthy"
        if previous != status:
            self._post(status, problems)

    def _post(self, status: str, problems: list[str]) -> None:
        body = {"service": "tokenbridge", "status": status, "problems": problems, "at": time.time()}
        if self.http is None:
            self.http = httpx.Client(timeout=3.0)
        try:
            response = self.http.post(
                self.settings.alert_webhook_url or "",
                content=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            response.raise_for_status()
            logger.warning("Pipeline %s; alert sent.", status, extra={"problems": problems})
        except httpx.HTTPError as exc:
            # Put the previous state back so that the next check sees the change again and retries.
            self.client.set(STATE, "healthy" if status == "unhealthy" else "unhealthy")
            logger.error("Could not post the %s alert: %s", status, exc)

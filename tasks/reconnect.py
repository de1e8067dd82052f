"""The Celery worker's consumer, reconnecting to its broker within a second of the broker being back.

Celery's consumer waits 2 s, then 4, 6 … up to 30 s between attempts to reach a lost broker (kombu's
``ensure_connection`` defaults). After a Redis failover that growing wait, not the promotion, decided when the
worker took tasks again: a generation restarted by the failover waited for it. Here the wait starts at a quarter
of a second and never exceeds one; an attempt costs one refused connection or one Sentinel question.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

# kombu's retry_over_time: the first wait, what each failed attempt adds, the most it waits.
INTERVAL_START_S = 0.25
INTERVAL_STEP_S = 0.25
INTERVAL_MAX_S = 1.0


class Consumer(CeleryConsumer):
    """``worker_consumer``: Celery's consumer with short, bounded waits between reconnection attempts."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=INTERVAL_START_S,
            interval_step=INTERVAL_STEP_S,
            interval_max=INTERVAL_MAX_S,
        )
        return super().ensure_connected(conn)

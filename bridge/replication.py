"""Waiting for replicas (``WAIT``) where losing an acknowledged write to a failover would matter most.

A replicated Redis (Sentinel) acknowledges a write before its replica has it; a primary that dies in
between takes the write with it. ``confirm_replicated`` bounds that for the few writes that are worth a
round trip (a new generation before it is answered). It is never used on the per-token path.
"""

from __future__ import annotations

import logging

import redis

from bridge import keys
from bridge.connections import is_cluster
from bridge.settings import Settings

logger = logging.getLogger(__name__)


def confirm_replicated(client: redis.Redis, settings: Settings, *, what: str) -> bool:
    """Wait until ``REDIS_WAIT_REPLICAS`` replicas have every write made so far, at most
    ``REDIS_WAIT_TIMEOUT_MS``; True when they have (or no wait is asked for).

    ``WAIT`` covers the writes of the connection it is sent on, and a pooled client may send it on another
    one; so it follows a write of its own on the same connection (a message on a channel nobody reads),
    and replication being one ordered log, every write acknowledged before it (by any connection or
    process) is then covered too. On a cluster ``WAIT`` would cover one node only: not used there.
    """
    wanted = settings.redis_wait_replicas
    if not wanted or is_cluster(client):
        return True
    pipe = client.pipeline(transaction=False)
    pipe.publish(keys.REPLICATION_MARK, "")
    pipe.wait(wanted, settings.redis_wait_timeout_ms)
    replicas = int(pipe.execute()[-1])
    if replicas < wanted:
        logger.warning(
            "%s: %s of %s replicas confirmed within %s ms; a failover now could lose it.",
            what,
            replicas,
            wanted,
            settings.redis_wait_timeout_ms,
        )
        return False
    return True

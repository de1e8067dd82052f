"""Waiting for replicas (``WAIT``) where losing an acknowledged write to a failover would matter most.

A replicated Redis (Sentinel) acknowledges a write before its replica has it; a primary that dies in
between takes the write with it. ``confirm_replicated`` bounds that for the few writes that are worth a
round trip (a new generation before it is answered; not its later events, whose loss a failover bounds
otherwise: docs/RELIABILITY.md). It is never used on the per-token path.
"""

from __future__ import annotations

import logging

import redis

from bridge import keys
from bridge.connections import is_cluster
from bridge.settings import Settings

logger = logging.getLogger(__name__)

# Writes of this process left unconfirmed since replicas last confirmed one: the warning is logged once per outage.
_unconfirmed = 0


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
    global _unconfirmed
    if replicas < wanted:
        if not _unconfirmed:
            logger.warning(
                "%s: %s of %s replicas confirmed within %s ms; a failover now could lose it. Not logged again until "
                "replicas confirm a write again.",
                what,
                replicas,
                wanted,
                settings.redis_wait_timeout_ms,
            )
        _unconfirmed += 1
        return False
    if _unconfirmed:
        logger.warning("Replicas confirm writes again, after %s left unconfirmed.", _unconfirmed)
        _unconfirmed = 0
    return True

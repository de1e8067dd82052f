"""The version of the Redis layout: which keys tokenbridge keeps, and what each of them holds.

``LAYOUT_VERSION`` goes up when a release writes keys that the release before it would misread, or no longer reads
what that release wrote (docs/releases.md, "Upgrading the Redis layout"). A change that the code reads both ways (old
keys read until they expire) keeps it. The first process to start against a Redis records it in ``keys.LAYOUT``;
web, worker and consumer refuse at start a Redis that holds another.
"""

from __future__ import annotations

import logging

import redis

from bridge import keys
from bridge.connections import UNAVAILABLE
from bridge.errors import RedisLayoutError
from bridge.version import VERSION

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 1
UPGRADE_NOTE = "docs/releases.md#upgrading-the-redis-layout"

# Redis down now, or an ACL user that may not write the key: the layout cannot be told.
_LAYOUT_UNREADABLE: tuple[type[Exception], ...] = (*UNAVAILABLE, redis.ResponseError)


def require_layout_version(client: redis.Redis) -> None:
    """Record ``LAYOUT_VERSION`` in ``keys.LAYOUT`` when Redis holds none (``SET NX``); refuse any other.

    Raises RedisLayoutError naming both versions and the upgrade note. When Redis cannot answer now, the layout
    cannot be told: a warning is logged and the process goes on, as with the Redis version.
    """
    try:
        found = recorded_layout(client)
    except _LAYOUT_UNREADABLE as exc:
        logger.warning("Could not check the Redis layout version (%s); this tokenbridge uses %d.", exc, LAYOUT_VERSION)
        return
    if found != str(LAYOUT_VERSION):
        raise RedisLayoutError(_refusal(found))


def recorded_layout(client: redis.Redis) -> str:
    """The layout version Redis holds, after recording ``LAYOUT_VERSION`` where it held none."""
    if client.set(keys.LAYOUT, LAYOUT_VERSION, nx=True):
        return str(LAYOUT_VERSION)
    value = client.get(keys.LAYOUT)
    if value is None:  # deleted between the two commands: nothing is recorded, so nothing contradicts this release
        return str(LAYOUT_VERSION)
    return value.decode() if isinstance(value, bytes) else str(value)


def _refusal(found: str) -> str:
    if not found.isdigit():
        what = f"an unknown Redis layout ({keys.LAYOUT} is {found!r})"
        advice = f"set {keys.LAYOUT} right once you know which release wrote the data"
    elif int(found) > LAYOUT_VERSION:
        what = f"Redis layout version {found}, written by a newer tokenbridge"
        advice = f"run a release that uses layout version {found} on every process (a downgrade needs the data gone)"
    else:
        what = f"Redis layout version {found}, written by an older tokenbridge"
        advice = "stop every process of the old release and follow the upgrade note before starting this one"
    return (
        f"Redis holds tokenbridge data in {what}; tokenbridge {VERSION} uses Redis layout version {LAYOUT_VERSION} "
        f"and will not run on another rather than misread it. To go on, {advice}: see {UPGRADE_NOTE}."
    )

"""Reading many streams at once, woken by hints: on a single Redis and on a Redis Cluster.

One ``XREAD BLOCK`` over every watched key would cost, at every read, the number of keys watched (packing
them, and Redis registering and unregistering each one), however little came back: at a few hundred
streams that is most of a web process's CPU. A cluster refuses it anyway: the keys of one command must share
a slot, and each generation has its own. So every write to a stream also sends a hint naming the stream
(``bridge.scripts``), and a reader here:

1. listens for the hints of the keys it watches before reading them. On a cluster, each key's own channel,
   published by a script on the node that holds the key, and subscribed on that node: the hint reaches it
   straight from there. (A PUBLISH also travels to every other node over the cluster bus, whose links delay a
   burst of small messages by some 40 ms: listening there would be slower.) On a single Redis, one shared
   channel (``hints``), whose messages each name every stream of a writer's flush: one subscription for all
   keys, and one message for many writes;
2. waits for a hint on any of its subscription connections (or its block time), and
3. reads the hinted keys without blocking: in one command on a single Redis, in one pipeline per node on a
   cluster.

A hint is only a wake-up: what is read is always the stream itself, from the reader's own position, so a
lost hint delays entries and never loses one. Newly watched keys are read at once, and every key is read
again every ``sweep_s`` and after a subscription connection was lost: that bounds the delay of a lost hint
(for one, a key whose slot moved to another node while watched).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

import redis
from redis.client import PubSub

from bridge.readers import Reply, StreamReader

logger = logging.getLogger(__name__)

# Answers of a node whose slot moved, or is moving, away.
MOVING = (redis.exceptions.AskError, redis.exceptions.TryAgainError)  # MovedError is an AskError
# How soon a key whose slot is being migrated is read again.
_RETRY_S = 0.05
# Hints taken in one go before reading: a flood of them must not starve the reads.
_MAX_HINTS = 10_000
# Longest wait for Redis to confirm a new subscription before reading the keys it hints.
_CONFIRM_S = 1.0


class NotifiedReader(StreamReader):
    """``XREAD``/``XREADGROUP`` over keys of any slots, woken by the writers' hints. One thread uses it."""

    def __init__(self, client: Any, *, sweep_s: float = 5.0, hints: str = "") -> None:
        self.client = client  # a Redis or a RedisCluster
        self.cluster = isinstance(client, redis.RedisCluster)
        self.sweep_s = sweep_s
        # A single Redis: the shared channel of the hints (every key "subscribed" is only watched for in it).
        self.hints = hints
        # One subscription connection per node that holds watched keys; each key's channel on its node.
        self._pubsubs: dict[str, PubSub] = {}
        self._subscribed: dict[str, str] = {}
        self._hinted: set[str] = set()
        self._next_sweep = 0.0
        # Keys to read again at a given time (their slot is being migrated).
        self._retry: dict[str, float] = {}
        # ``wake`` writes to one end; a waiting read listens on the other beside its subscriptions.
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._closer = weakref.finalize(self, _close_sockets, self._wake_in, self._wake_out)

    def wake(self) -> None:
        """See ``StreamReader.wake``."""
        with contextlib.suppress(OSError):
            self._wake_out.send(b"\0")

    def close(self) -> None:
        """See ``StreamReader.close``."""
        self._drop_subscriptions()
        self._closer()

    def _drop_subscriptions(self) -> None:
        for pubsub in self._pubsubs.values():
            with contextlib.suppress(redis.RedisError):
                pubsub.close()
        self._pubsubs = {}
        self._subscribed = {}

    def read(
        self,
        streams: dict[str, str],
        *,
        count: int,
        block_ms: int,
        group: tuple[str, str] | None = None,
        interrupt: threading.Event | None = None,
    ) -> Reply:
        """See ``StreamReader.read``: reads the keys hinted (or due for a sweep), after waiting for a hint."""
        try:
            now = time.monotonic()
            deadline = self._mark_due(streams, now, now + block_ms / 1000, group)
            if not self._hinted.intersection(streams):
                self._wait(streams, deadline, interrupt)
            self._take_hints(0.0)
        except (redis.ConnectionError, redis.TimeoutError):
            # Hints may have been lost with the connection: read everything once it is back.
            self._drop_subscriptions()
            self._next_sweep = 0.0
            refresh_after_failure(self.client)
            raise
        due = [key for key in streams if key in self._hinted]
        if not due:
            return []
        self._hinted.difference_update(due)
        if group is not None:
            # A read of a key's pending entries brings none of its new ones, whose hint may be gone (sent while a
            # reconnect had no subscription, and this read used up the sweep that follows one): read them next time.
            # After a failover the first tokens otherwise waited a whole sweep (CONSUMER_BLOCK_MS) in the consumer.
            self._hinted.update(key for key in due if streams[key] != ">")
        return self._collect(due, self._read_keys(due, streams, count, group), streams, count, group)

    def _mark_due(self, streams: dict[str, str], now: float, deadline: float, group: tuple[str, str] | None) -> float:
        """Subscribe, and mark the keys to read without a hint (new, swept, pending, moved); returns the deadline."""
        sweep = now >= self._next_sweep
        if sweep:
            # The slot map may have changed meanwhile (the client follows MOVED for every caller).
            self._rehome()
        self._subscribe(set(streams))
        if sweep:
            self._hinted.update(streams)
            self._next_sweep = now + self.sweep_s
        if group is not None:
            self._hinted.update(key for key, position in streams.items() if position != ">")
        for key, at in list(self._retry.items()):
            if at <= now or key not in streams:
                del self._retry[key]
                self._hinted.add(key)
            else:
                deadline = min(deadline, at)
        return deadline

    def _collect(
        self,
        due: list[str],
        results: dict[str, Any],
        streams: dict[str, str],
        count: int,
        group: tuple[str, str] | None,
    ) -> Reply:
        """The reply of a read of ``due``; a key that failed, moved or filled its page is read again."""
        reply: Reply = []
        failure: Exception | None = None
        for key in due:
            result = results[key]
            if isinstance(result, MOVING):
                # Its slot moved (read it again at once, on the new node) or is moving (again a little later).
                moved = isinstance(result, redis.exceptions.MovedError)
                self._retry[key] = time.monotonic() + (0 if moved else _RETRY_S)
                continue
            if isinstance(result, Exception):
                self._hinted.add(key)  # read it again next time
                failure = failure or result
                continue
            entries = result[0][1] if result else []
            if len(entries) >= count:
                self._hinted.add(key)  # more may wait behind this page
            if entries or (group is not None and streams[key] != ">"):
                reply.append((key, entries))
        if failure is not None and not reply:
            raise failure
        return reply

    def _read_keys(
        self, due: list[str], streams: dict[str, str], count: int, group: tuple[str, str] | None
    ) -> dict[str, Any]:
        """One plain pipeline per node that holds some of ``due``.

        Not the cluster pipeline: it asks the server for the keys of every XREAD (``COMMAND GETKEYS``, a round
        trip each) to find their slots, which are known here. A key whose slot moved meanwhile answers
        ``MOVED``: the slot map is refreshed and the key read again at the next turn.
        """
        if not self.cluster:
            return self._read_together(due, streams, count, group)
        results: dict[str, Any] = {}
        for node, node_keys in by_node(self.client, due):
            pipe = node.pipeline(transaction=False)
            for key in node_keys:
                if group is None:
                    pipe.xread({key: streams[key]}, count=count)
                else:
                    pipe.xreadgroup(group[0], group[1], {key: streams[key]}, count=count)
            results.update(zip(node_keys, pipe.execute(raise_on_error=False), strict=True))
        if refresh_if_moved(self.client, results.values()):
            self._rehome()
        return results

    def _read_together(
        self, due: list[str], streams: dict[str, str], count: int, group: tuple[str, str] | None
    ) -> dict[str, Any]:
        """A single Redis: every due key in one command, its reply split per key as ``_read_keys`` gives it."""
        positions = {key: streams[key] for key in due}
        if group is None:
            reply = self.client.xread(positions, count=count)
        else:
            reply = self.client.xreadgroup(group[0], group[1], positions, count=count)
        results: dict[str, Any] = {key: [] for key in due}
        for key, entries in reply or []:
            results[key] = [(key, entries)]
        return results

    def _rehome(self) -> None:
        """Drop the subscriptions of keys that another node holds now (after a resharding or a failover).

        The next read subscribes them again on their new node (and reads them at once).
        """
        if not self.cluster:
            return
        for key, node in list(self._subscribed.items()):
            if _node_name(self.client, key) != node:
                logger.info("Stream %s moved away from %s; listening for its hints on its new node.", key, node)
                del self._subscribed[key]
                self._pubsubs[node].unsubscribe(key)  # type: ignore[no-untyped-call]

    def _subscribe(self, keys: set[str]) -> None:
        if not self.cluster:
            self._watch_shared(keys)
            return
        new: dict[str, list[str]] = {}
        for key in keys.difference(self._subscribed):
            new.setdefault(_node_name(self.client, key), []).append(key)
        gone: dict[str, list[str]] = {}
        for key in set(self._subscribed).difference(keys):
            gone.setdefault(self._subscribed.pop(key), []).append(key)
            self._hinted.discard(key)
        for node, node_keys in gone.items():
            self._pubsubs[node].unsubscribe(*node_keys)  # type: ignore[no-untyped-call]
        for node, node_keys in new.items():
            # Subscribed before read: a write after this moment sends a hint, one before it is read now.
            pubsub = self._pubsub(node)
            pubsub.subscribe(*node_keys)
            self._confirm(pubsub, len(node_keys))
            self._subscribed.update(dict.fromkeys(node_keys, node))
            self._hinted.update(node_keys)

    def _watch_shared(self, keys: set[str]) -> None:
        """A single Redis: one subscription to the shared channel; new keys are read at once, as on a cluster."""
        if "" not in self._pubsubs:
            pubsub = self._pubsub("")
            pubsub.subscribe(self.hints)
            self._confirm(pubsub, 1)
        for key in set(self._subscribed).difference(keys):
            del self._subscribed[key]
            self._hinted.discard(key)
        new = keys.difference(self._subscribed)
        self._subscribed.update(dict.fromkeys(new, ""))
        self._hinted.update(new)

    def _confirm(self, pubsub: PubSub, channels: int) -> None:
        """Wait (at most ``_CONFIRM_S``) until Redis has confirmed ``channels`` new subscriptions of ``pubsub``.

        Only then is a read of the keys safe from a lost hint: a SUBSCRIBE is sent on a connection of its own, and
        Redis may serve the read first; a write landing between the two was missed by the read, and its hint by the
        subscription (after a failover, the first commits raced the hub's new subscription: a reader waited for the
        next sweep). Hints that arrive meanwhile are kept."""
        deadline = time.monotonic() + _CONFIRM_S
        while channels > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            message = pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if message.get("type") == "subscribe":
                channels -= 1
            elif message.get("type") == "message":
                self._hint(message)

    def _pubsub(self, node: str) -> PubSub:
        pubsub = self._pubsubs.get(node)
        if pubsub is None:
            connection = (
                self.client.get_redis_connection(self.client.get_node(node_name=node)) if self.cluster else self.client
            )
            # Confirmations are returned too (and skipped in ``_drain``): an ignored one reads as None, the same as
            # "nothing more", which must mean that the parser holds nothing the selector cannot see.
            pubsub = self._pubsubs[node] = connection.pubsub(ignore_subscribe_messages=False)
        return pubsub

    def _wait(self, streams: dict[str, str], deadline: float, interrupt: threading.Event | None) -> None:
        while interrupt is None or not interrupt.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._take_hints(remaining) and self._hinted.intersection(streams):
                return

    def _take_hints(self, timeout_s: float) -> int:
        """Collect the hints of every subscription, waiting up to ``timeout_s`` (or a ``wake``) when none is there."""
        taken = self._drain(self._pubsubs.values())
        if taken or timeout_s <= 0:
            return taken
        sockets: dict[Any, PubSub] = {}
        for pubsub in self._pubsubs.values():
            connection: Any = pubsub.connection
            if connection is not None and connection._sock is not None:
                sockets[connection._sock] = pubsub
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_in, selectors.EVENT_READ)
            for sock in sockets:
                selector.register(sock, selectors.EVENT_READ)
            ready = [key.fileobj for key, _ in selector.select(timeout_s)]
        if self._wake_in in ready:
            with contextlib.suppress(OSError):
                while self._wake_in.recv(4096):
                    pass
        return self._drain(sockets[sock] for sock in ready if sock is not self._wake_in)

    def _drain(self, pubsubs: Iterable[PubSub]) -> int:
        """Hints already received (read from the socket, or buffered by the parser), without waiting."""
        taken = 0
        for pubsub in pubsubs:
            while taken < _MAX_HINTS:
                message = pubsub.get_message(timeout=0.0)
                if message is None:
                    break
                if message.get("type") == "message":
                    self._hint(message)
                    taken += 1
        return taken

    def _hint(self, message: dict[str, Any]) -> None:
        """A key's own channel (a cluster), or the shared channel's payload of keys (a single Redis)."""
        channel = _text(message["channel"])
        if channel != self.hints:
            self._hinted.add(channel)
            return
        watched = self._subscribed
        self._hinted.update(key for key in _text(message["data"]).split(" ") if key in watched)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _close_sockets(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


def _node_name(client: Any, key: str) -> str:
    if not isinstance(client, redis.RedisCluster):
        return ""
    name: str = client.get_node_from_key(key).name  # type: ignore[no-untyped-call]
    return name


def node_client(client: redis.Redis, key: str) -> redis.Redis:
    """A plain client on the node that holds ``key``; ``client`` itself on a single Redis.

    For commands that a cluster client would route by asking the server ``COMMAND GETKEYS`` first (XREAD,
    XREADGROUP, and EVAL in a cluster pipeline): one round trip each, saved here.
    """
    if not isinstance(client, redis.RedisCluster):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def by_node(client: redis.Redis, keys: Iterable[str]) -> list[tuple[redis.Redis, list[str]]]:
    """``keys`` grouped by the node that holds them, each group with a plain client on its node."""
    if not isinstance(client, redis.RedisCluster):
        return [(client, list(keys))]
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_node_name(client, key), []).append(key)
    return [(client.get_redis_connection(client.get_node(node_name=name)), group) for name, group in groups.items()]


def refresh_after_failure(client: redis.Redis) -> None:
    """Ask the cluster for its slot map again after a node could not be reached: if a replica was promoted
    in its place, the next read goes there (reads through plain node clients never refresh it themselves)."""
    if not isinstance(client, redis.RedisCluster):
        return
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        logger.debug("Cluster slot map not refreshed: %s", exc)


def refresh_if_moved(client: redis.Redis, results: Iterable[object]) -> bool:
    """Refresh a cluster client's slot map when a node answered that a slot moved (read again later).

    True when it was refreshed. A slot in the middle of a migration answers ASK until it is done: its keys are
    read again at each turn until then.
    """
    moved = any(isinstance(r, MOVING) for r in results)
    if moved and isinstance(client, redis.RedisCluster):
        client.nodes_manager.initialize()
    return moved

"""Ownership of generations: claiming them from ``llm:work``, keeping them, taking over a dead consumer's, handing back.

A work entry stays pending in the processors' group while its generation runs; re-reading our own pending
entries keeps them fresh, so only a dead consumer's go idle and are taken over with ``XAUTOCLAIM``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from typing import Any

import redis

from bridge import keys, liveness
from bridge.cluster import MOVING, node_client, refresh_if_moved
from bridge.events import FINISHED_STATUSES
from bridge.settings import Settings
from workers import metrics, tracing
from workers.celery_events import CeleryEvents
from workers.owned import OwnedGeneration
from workers.processors import Chain

logger = logging.getLogger(__name__)

PAGE = 100


class Ownership:
    """The generations one consumer owns (``owned``), and the work entries that hand them to it."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        chain: Chain,
        *,
        name: str,
        group: str,
        events: CeleryEvents | None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.chain = chain
        self.name = name
        self.group = group
        self.events = events
        self.work_streams = keys.work_streams(settings.work_shard_count)
        self.owned: dict[str, OwnedGeneration] = {}

    def adopt(
        self, generation_id: str, work_id: str, *, taken_over: bool, work_stream: str = keys.WORK_STREAM
    ) -> OwnedGeneration | None:
        """Own a generation: load its state from ``:meta``. Returns it when it is newly ours."""
        return self.adopt_many([(generation_id, work_id, work_stream)], taken_over=taken_over)[0]

    def adopt_many(self, work: list[tuple[str, str, str]], *, taken_over: bool) -> list[OwnedGeneration | None]:
        """``adopt`` for each (generation id, work entry id, work stream), their states read in one round trip."""
        new = [(gid, work_id, stream) for gid, work_id, stream in work if gid and gid not in self.owned]
        pipe = self.client.pipeline(transaction=False)
        for gid, _, _ in new:
            pipe.hgetall(keys.gen_meta(gid))
        metas: dict[str, dict[str, str]] = {}
        if new:
            metas = {gid: meta for (gid, _, _), meta in zip(new, pipe.execute(), strict=True)}
        adopted: list[OwnedGeneration | None] = []
        for gid, work_id, stream in work:
            if gid and gid in self.owned:
                adopted.append(None)  # ours already (or twice in one read)
                continue
            adopted.append(self._own(gid, work_id, stream, metas.get(gid) or {}, taken_over=taken_over))
        return adopted

    def _own(
        self, generation_id: str, work_id: str, work_stream: str, meta: dict[str, str], *, taken_over: bool
    ) -> OwnedGeneration | None:
        if not meta or meta.get("status") in FINISHED_STATUSES:
            # Unknown, expired or already finished: nothing left to do for it.
            self.release_work(work_stream, work_id)
            return None
        owned = OwnedGeneration.from_meta(generation_id, work_id, meta, work_stream=work_stream)
        owned.gen.resumed = owned.gen.resumed or taken_over
        self.owned[generation_id] = owned
        tracing.taken(generation_id, meta, taken_over=taken_over)
        if self.events is not None:
            self.events.received(owned.gen, taken_over=taken_over)
        self.chain.start(owned.gen)
        return owned

    def refresh(self) -> list[OwnedGeneration]:
        """Keep our work entries fresh and let go of those taken from us; returns what we own from an earlier life.

        Reading our own pending entries resets their idle time and lists exactly what we still own.
        """
        still_ours: set[str] = set()
        adopted: list[OwnedGeneration] = []
        for stream in self.work_streams:
            for work_id, fields in self._own_entries(stream):
                if not fields:
                    self.release_work(stream, work_id)  # deleted while pending
                    continue
                gid = fields.get("generation_id", "")
                still_ours.add(gid)
                if gid and gid not in self.owned:
                    # Ours from an earlier life under the same name: continue it.
                    adopted += filter(None, [self.adopt(gid, work_id, taken_over=True, work_stream=stream)])
        for gid in list(self.owned):
            if gid not in still_ours:
                logger.warning("Generation %s was taken over by another consumer; letting it go.", gid)
                del self.owned[gid]
                tracing.let_go(gid, "taken over")
                if self.events is not None:
                    self.events.handed_on(gid, "taken over by another consumer")
        return adopted

    def take_over_idle(self) -> list[OwnedGeneration]:
        """Claim the work entries a dead consumer left idle; returns the generations taken over."""
        adopted: list[OwnedGeneration] = []
        for stream in self.work_streams:
            start = "0-0"
            for _ in range(10):
                reply: Any = self.client.xautoclaim(
                    stream,
                    self.group,
                    self.name,
                    min_idle_time=self.settings.consumer_claim_idle_ms,
                    start_id=start,
                    count=PAGE,
                )
                start, entries = reply[0], reply[1]
                for work_id, fields in entries:
                    if fields is None:
                        continue
                    gid = fields.get("generation_id", "")
                    logger.info("Taking over generation %s from an idle consumer.", gid, extra={"generation_id": gid})
                    metrics.TAKEOVERS.inc()
                    adopted += filter(None, [self.adopt(gid, work_id, taken_over=True, work_stream=stream)])
                if start == "0-0":
                    break
        return adopted

    def take_over_dead(self) -> list[OwnedGeneration]:
        """Claim the work entries of the consumers whose heartbeat stopped (``workers.liveness``); returns the
        generations taken over. A consumer left with nothing pending is struck off ``llm:consumers``."""
        adopted: list[OwnedGeneration] = []
        dead_after_ms = self.settings.dead_after_ms
        for dead in liveness.dead(self.client, keys.CONSUMERS_ZSET, dead_after_ms, but=self.name):
            left = 0
            for stream in self.work_streams:
                pending: Any = self.client.xpending_range(stream, self.group, "-", "+", PAGE, consumername=dead)
                ids = [entry["message_id"] for entry in pending]
                if not ids:
                    continue
                left += len(ids)
                # Half the death time idle at least: two consumers that notice at once do not both take an entry.
                claimed: Any = self.client.xclaim(stream, self.group, self.name, dead_after_ms // 2, ids)
                for work_id, fields in claimed:
                    if not fields:
                        self.release_work(stream, work_id)  # deleted while pending
                        continue
                    gid = fields.get("generation_id", "")
                    logger.info(
                        "Taking over generation %s from consumer %s, whose heartbeat stopped.",
                        gid,
                        dead,
                        extra={"generation_id": gid},
                    )
                    metrics.TAKEOVERS.inc()
                    adopted += filter(None, [self.adopt(gid, work_id, taken_over=True, work_stream=stream)])
            if not left:
                self.client.zrem(keys.CONSUMERS_ZSET, dead)
        return adopted

    def hand_back(self) -> None:
        """Deregister, and mark our work entries idle so that another consumer takes them over at once."""
        try:
            for stream in self.work_streams:
                work_ids: list[Any] = [o.work_id for o in self.owned.values() if o.work_stream == stream]
                if work_ids:
                    self.client.xclaim(
                        stream,
                        self.group,
                        self.name,
                        min_idle_time=0,
                        message_ids=work_ids,
                        idle=self.settings.consumer_claim_idle_ms,
                        justid=True,
                    )
            if self.owned:
                logger.info("Consumer %s handed back %s generations.", self.name, len(self.owned))
            if self.events is not None:
                for gid in self.owned:
                    self.events.handed_on(gid, f"consumer {self.name} stopped; another one continues")
            self.client.zrem(keys.CONSUMERS_ZSET, self.name)
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            logger.warning("Consumer %s could not deregister.", self.name)

    def reload(self, generation_ids: Collection[str] | None = None) -> list[OwnedGeneration]:
        """After an error mid-commit (or a refused commit): state from ``:meta`` (what was committed), and our
        pending entries again; of every generation we own, or of ``generation_ids``. Returns those whose end was
        committed meanwhile: they are ours no more (the caller finishes them: ``finished``)."""
        ended: list[OwnedGeneration] = []
        for gid, old in list(self.owned.items()):
            if generation_ids is not None and gid not in generation_ids:
                continue
            meta: dict[str, str] = self.client.hgetall(keys.gen_meta(gid))  # type: ignore[assignment]
            if not meta:
                self.forget(gid)
                continue
            if meta.get("status") in FINISHED_STATUSES:
                # Its end was committed, and what follows it (the release of its work entry) failed with the connection.
                ended.append(OwnedGeneration.from_meta(gid, old.work_id, meta, work_stream=old.work_stream))
                self.owned.pop(gid, None)
                continue
            owned = OwnedGeneration.from_meta(gid, old.work_id, meta, work_stream=old.work_stream)
            owned.pending_retry = True
            owned.gen.scratch = old.gen.scratch
            owned.poison = old.poison
            self.owned[gid] = owned
        return ended

    def release(self, owned: OwnedGeneration) -> None:
        """The generation ended (its work entry was released with its end: ``workers.commit``): ours no more."""
        self.owned.pop(owned.generation_id, None)

    def forget(self, generation_id: str) -> None:
        """Let go of a generation whose raw stream is gone (expired or deleted)."""
        owned = self.owned.pop(generation_id, None)
        if owned is not None:
            tracing.let_go(generation_id, "gone")
            logger.warning("Generation %s has no raw stream any more; released.", generation_id)
            self.release_work(owned.work_stream, owned.work_id)
            if self.events is not None:
                self.events.vanished(generation_id)

    def recover_missing_groups(self) -> None:
        """After ``NOGROUP``: forget the generations whose raw stream lost its group (or itself)."""
        for gid in list(self.owned):
            try:
                groups: Any = self.client.xinfo_groups(keys.gen_raw(gid))
            except redis.ResponseError:
                groups = []
            if not any(group.get("name") == self.group for group in groups):
                self.forget(gid)

    def release_work(self, stream: str, work_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(stream, self.group, work_id)
        pipe.xdel(stream, work_id)
        pipe.execute()

    def _own_entries(self, stream: str) -> Iterator[tuple[str, dict[str, str]]]:
        """Every entry of ours pending in a work shard, a page at a time."""
        last = "0-0"
        while True:
            reply = self._read_own(stream, last)
            entries = reply[0][1] if reply else []
            for work_id, fields in entries:
                last = work_id
                yield work_id, fields
            if len(entries) < PAGE:
                return

    def _read_own(self, stream: str, after: str) -> Any:
        """A page of our own pending entries of a work shard (straight from its node)."""
        try:
            return node_client(self.client, stream).xreadgroup(self.group, self.name, {stream: after}, count=PAGE)
        except MOVING as exc:
            # The shard's slot moved: learn where, and read through the cluster client, which follows it.
            refresh_if_moved(self.client, [exc])
            return self.client.xreadgroup(self.group, self.name, {stream: after}, count=PAGE)

"""tokenbridge on a real 3-master Redis Cluster: sharded work, hinted reads across slots, the consumer and the hub."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import redis

from app.hub import Hub
from app.streaming import follow, one_by_one
from bridge import keys, streams
from bridge.cluster import NotifiedReader, node_client
from bridge.connections import close
from bridge.events import Event, decode_out
from bridge.producer import GenerationWriter
from bridge.sessions import SessionResolver
from bridge.settings import Settings
from tests.support import wait_for
from tests.support.cluster import EmbeddedCluster
from workers.commit import Batch
from workers.consumer import ConsumerWorker
from workers.owned import OwnedGeneration
from workers.processors import GenerationState, default_processors

WORDS = [f"w{i} " for i in range(30)]


def _new(rc: redis.Redis, settings: Settings, gid: str, session: str = "s1") -> str:
    streams.create_generation(
        rc,
        generation_id=gid,
        session_id=session,
        model="echo",
        request={"model": "echo", "prompt": "hi"},
        group=settings.redis_consumer_group,
        retention_ms=settings.redis_stream_retention_ms,
        work_shards=settings.work_shard_count,
    )
    return gid


def _produce(rc: redis.Redis, gid: str, words: list[str]) -> None:
    writer = GenerationWriter(rc, gid, lease_ms=10_000, max_length=10_000)
    writer.claim()
    writer.write([("token", {"content": w, "ts": 1.0}) for w in words])
    writer.write([("done", {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": len(words)}})])


def _text(rc: redis.Redis, key: str) -> str:
    return "".join(orjson.loads(f["data"]).get("content", "") for _, f in rc.xrange(key) if f["event"] == "token")


def _node_of(rc: Any, key: str) -> str:
    node = rc.get_node_from_key(key)
    return f"{node.host}:{node.port}"


def test_work_shards_spread_over_every_node(rc: redis.Redis, cluster_settings: Settings) -> None:
    # Given the default shard count on a cluster
    shards = keys.work_streams(cluster_settings.work_shard_count)
    # Then there are 16 shards, and each of the 3 masters holds some of them
    assert len(shards) == 16
    owners = {_node_of(rc, shard) for shard in shards}
    assert len(owners) == 3
    # And generations are spread over the shards
    used = {keys.work_stream_for(f"gen_{i}", len(shards)) for i in range(200)}
    assert len(used) == 16


def test_a_hint_wakes_the_reader_and_reads_keys_of_every_node(rc: redis.Redis) -> None:
    # Given a reader watching streams whose keys live on different nodes
    watched = {f"llm:gen:{{g{i}}}:out": "0" for i in range(12)}
    assert len({_node_of(rc, key) for key in watched}) == 3
    reader = NotifiedReader(rc, sweep_s=60)
    assert reader.read(watched, count=10, block_ms=50) == []
    # When one of them gets an entry and its hint, while the reader waits for up to 5 s
    key = "llm:gen:{g7}:out"

    def write() -> None:
        time.sleep(0.2)  # a fixed wait, the scenario: the entry comes while the reader is blocked
        rc.xadd(key, {"event": "token", "data": "{}"})
        rc.publish(key, "")

    threading.Thread(target=write).start()
    started = time.monotonic()
    reply = reader.read(watched, count=10, block_ms=5000)
    # Then the read returns that entry as soon as the hint came, not after the block time
    assert [k for k, _ in reply] == [key]
    assert time.monotonic() - started < 2.0
    reader.close()


def test_an_entry_whose_hint_was_lost_is_read_by_the_sweep(rc: redis.Redis) -> None:
    # Given a reader that swept its keys a moment ago
    key = "llm:gen:{lost}:out"
    reader = NotifiedReader(rc, sweep_s=0.5)
    assert reader.read({key: "0"}, count=10, block_ms=10) == []
    # When an entry is written without a hint
    rc.xadd(key, {"event": "token", "data": "{}"})
    # Then the reader still gets it, within the sweep interval
    started = time.monotonic()
    reply = wait_for(lambda: reader.read({key: "0"}, count=10, block_ms=200), timeout_s=3, interval_s=0)
    assert reply[0][0] == key
    assert time.monotonic() - started < 1.5
    reader.close()


def test_generations_on_every_node_flow_through_a_consumer(rc: redis.Redis, cluster_settings: Settings) -> None:
    # Given generations whose keys live on all three masters, their producers done
    gids = [_new(rc, cluster_settings, f"gen_{i}", session=f"s{i % 3}") for i in range(9)]
    assert len({_node_of(rc, keys.gen_out(g)) for g in gids}) == 3
    for gid in gids:
        _produce(rc, gid, WORDS)
    raw_ids = {gid: [i for i, _ in rc.xrange(keys.gen_raw(gid))] for gid in gids}
    # When one consumer runs
    worker = ConsumerWorker(rc, cluster_settings, default_processors(rc))
    status = lambda g: rc.hget(keys.gen_meta(g), "status")  # noqa: E731
    wait_for(lambda: all(status(g) == "completed" for g in gids), step=lambda: worker.run_once(block_ms=50))
    # Then every :out has the whole text, ids equal to :raw's (gone now that it is committed), and every session
    # stream points at each of its generations' events once
    for gid in gids:
        assert _text(rc, keys.gen_out(gid)) == "".join(WORDS)
        assert [i for i, _ in rc.xrange(keys.gen_out(gid))] == raw_ids[gid]
        assert not rc.exists(keys.gen_raw(gid))
    for session in ("s0", "s1", "s2"):
        entries = rc.xrange(keys.session_out(session))
        assert len(entries) == 3 * (len(WORDS) + 1)
        assert len({(f["n"], f["i"]) for _, f in entries}) == len(entries)
    # And the work stream is empty again: every generation was acknowledged and released
    assert streams.work_backlog(rc, cluster_settings.redis_consumer_group, cluster_settings.work_shard_count)[0] == 0
    worker.ownership.hand_back()


def test_a_batch_committed_again_is_copied_to_the_session_once(rc: redis.Redis, cluster_settings: Settings) -> None:
    # Given a generation processed and committed by a consumer (session copy included)
    gid = _new(rc, cluster_settings, "gen_again", session="s_again")
    _produce(rc, gid, WORDS[:3])
    worker = ConsumerWorker(rc, cluster_settings, default_processors(rc))
    wait_for(lambda: rc.hget(keys.gen_meta(gid), "status") == "completed", step=lambda: worker.run_once(block_ms=50))
    copied = rc.xlen(keys.session_out("s_again"))
    # When the same events are copied again (a consumer that died between the copy and its commit, taken over)
    replay = [
        (entry_id, Event(id=entry_id, type=fields["event"], data=orjson.loads(fields["data"])))
        for entry_id, fields in rc.xrange(keys.gen_out(gid))
    ]
    owned = OwnedGeneration(GenerationState(generation_id=gid, session_id="s_again"), work_id="0-1")
    worker.committer.copy_to_sessions([Batch(owned, outs=replay, acked=[entry_id for entry_id, _ in replay])])
    # Then the session stream is unchanged
    assert rc.xlen(keys.session_out("s_again")) == copied == 4


def test_a_paused_consumers_stale_commit_after_a_takeover_is_refused(
    rc: redis.Redis, cluster_settings: Settings
) -> None:
    # Given consumer A committed the first tokens, then B took the generation over and committed the next ones
    gid = _new(rc, cluster_settings, "gen_stale", session="s_stale")
    writer = GenerationWriter(rc, gid, lease_ms=10_000, max_length=10_000)
    writer.claim()
    writer.write([("token", {"content": w, "ts": 1.0}) for w in WORDS[:3]])
    a = ConsumerWorker(rc, cluster_settings, default_processors(rc), name="consumer-a")
    wait_for(lambda: rc.hget(keys.gen_meta(gid), "seq") == "3", step=lambda: a.run_once(block_ms=50))
    b = ConsumerWorker(rc, cluster_settings, default_processors(rc), name="consumer-b")
    wait_for(lambda: gid in b.owned, step=lambda: b.run_once(block_ms=50))
    writer.write([("token", {"content": w, "ts": 1.0}) for w in WORDS[3:5]])
    wait_for(lambda: rc.hget(keys.gen_meta(gid), "seq") == "5", step=lambda: b.run_once(block_ms=50))
    # When A, before its housekeeping notices, is handed a new entry and commits it with its stale seq
    writer.write([("token", {"content": WORDS[5], "ts": 1.0})])
    a._next_housekeeping = time.monotonic() + 60
    wait_for(lambda: gid in a._refused, step=lambda: a.run_once(block_ms=50))
    a.run_once(block_ms=10)
    # Then nothing of it was written, A let the generation go, and B commits the entry once
    assert gid not in a.owned
    writer.write([("done", {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 6}})])
    wait_for(lambda: rc.hget(keys.gen_meta(gid), "status") == "completed", step=lambda: b.run_once(block_ms=50))
    out = [orjson.loads(f["data"]) for _, f in rc.xrange(keys.gen_out(gid))]
    assert [d["seq"] for d in out] == list(range(7))
    assert "".join(d.get("content", "") for d in out) == "".join(WORDS[:6])
    key = keys.session_out("s_stale")
    session = SessionResolver(rc).resolve(key, [decode_out(i, f) for i, f in rc.xrange(key)])
    assert [e.json()["seq"] for e in session] == list(range(7))


def test_the_hub_follows_streams_of_every_node(rc: redis.Redis, redis_cluster: EmbeddedCluster) -> None:
    # Given a hub on the cluster, and two generations on different nodes being written with hints
    commands = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    hub = Hub(NotifiedReader(commands, sweep_s=30), block_ms=30_000)
    outs = ["llm:gen:{ha}:out", "llm:gen:{hz}:out"]
    assert _node_of(rc, outs[0]) != _node_of(rc, outs[1])

    def produce(key: str) -> None:
        for i in range(20):
            rc.xadd(key, {"event": "token", "data": orjson.dumps({"seq": i, "content": f"{i} "}).decode()})
            rc.publish(key, "")
            time.sleep(0.01)  # pacing: tokens arrive one by one while the readers follow
        rc.xadd(key, {"event": "done", "data": orjson.dumps({"seq": 20}).decode()})
        rc.publish(key, "")

    results: dict[str, list[int]] = {}

    def read(key: str) -> None:
        events = one_by_one(follow(hub, rc, key, "0", keepalive_s=5, max_duration_s=20))
        results[key] = [orjson.loads(e.data)["seq"] for e in events if e is not None]

    readers = [threading.Thread(target=read, args=(key,)) for key in outs]
    for thread in readers:
        thread.start()
    started = time.monotonic()
    for key in outs:
        produce(key)
    for thread in readers:
        thread.join(20)
    # Then each reader got every event once, in order, long before the hub's 30 s block time
    assert results == {key: list(range(21)) for key in outs}
    assert time.monotonic() - started < 10
    hub.stop()
    close(commands)  # type: ignore[arg-type]


def test_producer_writes_hint_readers_on_a_cluster_and_on_a_single_redis(
    rc: redis.Redis, cluster_settings: Settings, r: redis.Redis
) -> None:
    # Given a subscriber to a generation's raw stream's hints: its own channel on a cluster, the shared channel
    # of raw streams on a single Redis
    for client, on_cluster in ((rc, True), (r, False)):
        gid = f"gen_hint_{on_cluster}"
        listener: Any = client.get_redis_connection(client.get_random_node()) if on_cluster else client  # type: ignore[attr-defined]
        pubsub = listener.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.gen_raw(gid) if on_cluster else keys.RAW_HINTS)
        # When the producer claims its attempt and writes tokens
        client.hset(keys.gen_meta(gid), mapping={"status": "queued", "attempt": 0})
        _produce(client, gid, ["a", "b"])
        # Then a hint naming the raw stream arrives for each write, wherever the reader listens
        messages = _hints(pubsub, 2)
        assert set(messages) <= {keys.gen_raw(gid)}
        pubsub.close()


def _hints(pubsub: Any, count: int, *, timeout_s: float = 2) -> list[str]:
    """The streams named by the next ``count`` hints that ``pubsub`` receives (a key's own channel, or the keys a
    shared channel's message names)."""
    channels: list[str] = []

    def enough() -> bool:
        if message := pubsub.get_message(timeout=0.1):
            shared = message["channel"] in (keys.RAW_HINTS, keys.OUT_HINTS)
            channels.extend(message["data"].split(" ") if shared else [message["channel"]])
        return len(channels) >= count

    wait_for(enough, timeout_s=timeout_s, interval_s=0, message=f"fewer than {count} hints within {timeout_s}s")
    return channels


def test_the_backlog_adds_up_every_work_shard(rc: redis.Redis, cluster_settings: Settings) -> None:
    # Given the consumer group on every shard and three new generations on different shards
    group, shards = cluster_settings.redis_consumer_group, cluster_settings.work_shard_count
    for stream in keys.work_streams(shards):
        streams.ensure_group(rc, stream, group)
    gids = [_new(rc, cluster_settings, f"gen_backlog_{i}") for i in range(3)]
    assert len({keys.work_stream_for(g, shards) for g in gids}) == 3
    # Then they are waiting, none running (Redis 6.2 cannot tell the lag)
    pending, lag, oldest_s = streams.work_backlog(rc, group, shards)
    assert pending == 0 and lag in (3, None) and oldest_s == 0.0
    # When a consumer takes them, a moment later
    time.sleep(0.05)  # a fixed wait, the scenario: the oldest entry ages 0.05 s, which its age must show
    for stream in keys.work_streams(shards):
        rc.xreadgroup(group, "c1", {stream: ">"})
    # Then all three are running, the oldest since its creation
    pending, lag, oldest_s = streams.work_backlog(rc, group, shards)
    assert pending == 3 and lag in (0, None) and oldest_s >= 0.05


def test_a_generation_whose_work_entry_cannot_be_written_leaves_nothing_behind(
    rc: redis.Redis, cluster_settings: Settings, monkeypatch: Any
) -> None:
    # Given a cluster on which the write of the work entry fails (its node went away)
    class Unreachable:
        def pipeline(self, transaction: bool = False) -> Any:
            raise redis.ConnectionError("node went away")

    monkeypatch.setattr(streams, "node_client", lambda client, key: Unreachable())
    # When a generation is created
    try:
        _new(rc, cluster_settings, "gen_orphan")
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("the failure was not reported")
    # Then the caller got the error (the API answers 503) and no key of the generation is left
    assert not any(rc.exists(key) for key in keys.generation_keys("gen_orphan"))


def test_a_watched_stream_whose_slot_moves_keeps_streaming(rc: redis.Redis, redis_cluster: EmbeddedCluster) -> None:
    # Given a reader following a stream, subscribed to its hints on the node that holds it
    key = "llm:gen:{moving}:out"
    rc.xadd(key, {"n": "0"})
    reader = NotifiedReader(rc, sweep_s=0.5)
    position = reader.read({key: "0"}, count=10, block_ms=10)[0][1][-1][0]
    before = _node_of(rc, key)
    # When its slot is migrated to another node (as a resharding does) and the stream is written there
    target = next(i for i, node in enumerate(redis_cluster.nodes) if f"127.0.0.1:{node.port}" != before)
    redis_cluster.move_slot(rc.keyslot(key), target)  # type: ignore[attr-defined]

    def write(n: int) -> None:
        rc.xadd(key, {"n": str(n)})
        node_client(rc, key).publish(key, "")  # the hint, from the key's node

    write(1)
    # Then the reader gets the entry (its next sweep meets MOVED and re-reads the slot map)
    got = wait_for(lambda: reader.read({key: position}, count=10, block_ms=200), timeout_s=5, interval_s=0)
    assert got[0][1][0][1] == {"n": "1"}
    position = got[0][1][-1][0]
    # And from its next sweep on, it listens for hints on the new node only (straight from it, not over the
    # cluster bus)
    after = _node_of(rc, key)
    assert after != before

    def listeners() -> dict[str, int]:
        counts = {}
        for node in redis_cluster.nodes:
            direct = redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)
            counts[f"127.0.0.1:{node.port}"] = dict(direct.pubsub_numsub(key))[key]
            direct.close()
        return counts

    wait_for(
        lambda: listeners() == {name: int(name == after) for name in listeners()},
        step=lambda: reader.read({key: position}, count=10, block_ms=50),
        timeout_s=5,
    )
    # And the next entry still arrives with its hint
    reader.sweep_s = 60
    write(2)
    got = reader.read({key: position}, count=10, block_ms=5000)
    assert got and got[0][1][0][1] == {"n": "2"}
    reader.close()

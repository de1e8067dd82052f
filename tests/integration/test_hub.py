"""The hub on a real Redis: one reader for every key, catch-up then live without a gap or a duplicate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import redis
from prometheus_client import REGISTRY

from app.hub import Hub
from app.streaming import follow, one_by_one
from bridge import keys
from bridge.cluster import NotifiedReader
from bridge.embedded import EmbeddedRedis
from bridge.events import ClientEvent
from tests.support import wait_for


@pytest.fixture
def hub(redis_server: EmbeddedRedis, r: redis.Redis) -> Iterator[Hub]:
    reads = redis.Redis.from_url(redis_server.url, decode_responses=True, client_name="hub-test")
    hub = Hub(NotifiedReader(reads, sweep_s=10, hints=keys.OUT_HINTS), block_ms=10_000, queue_size=16)
    yield hub
    hub.stop()
    reads.close()


def _append(r: redis.Redis, key: str, event: str, seq: int) -> None:
    """Append an event and hint its readers, as every writer of tokenbridge does on a single Redis."""
    r.xadd(key, {"event": event, "data": orjson.dumps({"seq": seq}).decode()})
    r.publish(keys.OUT_HINTS, key)


def _produce(r: redis.Redis, key: str, count: int, *, interval_s: float) -> threading.Thread:
    def run() -> None:
        for i in range(count):
            _append(r, key, "token", i)
            time.sleep(interval_s)  # pacing: a producer writing at its own speed
        _append(r, key, "done", count)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _collect(hub: Hub, r: redis.Redis, key: str, after: str = "0", *, slow_s: float = 0.0) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    for event in one_by_one(follow(hub, r, key, after, keepalive_s=5, max_duration_s=30)):
        if event is not None:
            events.append(event)
            if slow_s:
                time.sleep(slow_s)  # a fixed wait, the scenario: a reader slower than the producer
    return events


def test_readers_joining_at_any_moment_get_every_event_once_in_order(hub: Hub, r: redis.Redis) -> None:
    # Given a stream being written while readers join one after another
    key = "llm:gen:{g1}:out"
    producer = _produce(r, key, 300, interval_s=0.002)
    results: list[list[ClientEvent]] = []

    def reader() -> None:
        results.append(_collect(hub, r, key))

    threads = []
    for _ in range(6):
        thread = threading.Thread(target=reader)
        thread.start()
        threads.append(thread)
        time.sleep(0.08)  # pacing: readers join one after another while the stream is written
    producer.join()
    for thread in threads:
        thread.join(20)
    # Then each got seq 0..300 exactly, ending with the terminal event
    assert len(results) == 6
    for events in results:
        assert [e.json()["seq"] for e in events] == list(range(301))
        assert events[-1].event == "done"
    assert hub.watched_keys == 0  # every reader left


def test_a_reader_resuming_from_an_id_gets_exactly_what_follows(hub: Hub, r: redis.Redis) -> None:
    key = "llm:gen:{g2}:out"
    _produce(r, key, 50, interval_s=0).join()
    everything = _collect(hub, r, key)
    resumed = _collect(hub, r, key, after=everything[19].id)
    assert [e.id for e in resumed] == [e.id for e in everything[20:]]


def test_a_slow_reader_falls_back_to_redis_and_still_gets_everything(hub: Hub, r: redis.Redis) -> None:
    # Given a reader that is much slower than the producer (buffer of 16 events)
    key = "llm:gen:{g3}:out"
    fast: list[list[ClientEvent]] = []
    slow: list[list[ClientEvent]] = []
    threads = [
        threading.Thread(target=lambda: slow.append(_collect(hub, r, key, slow_s=0.005))),
        threading.Thread(target=lambda: fast.append(_collect(hub, r, key))),
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: hub.subscriber_count == 2)
    _produce(r, key, 400, interval_s=0.0005).join()
    for thread in threads:
        thread.join(30)
    # Then both readers get all 401 events, in order, the slow one after falling back at least once
    assert hub.resyncs >= 1
    assert [e.json()["seq"] for e in slow[0]] == list(range(401))
    assert [e.json()["seq"] for e in fast[0]] == list(range(401))


def test_a_new_key_is_read_without_waiting_for_the_blocked_read(hub: Hub, r: redis.Redis) -> None:
    # Given the hub waiting (10 s, and no sweep for 10 s) on another key, subscribed to its hints
    other = threading.Thread(target=lambda: _collect(hub, r, "llm:gen:{idle}:out"), daemon=True)
    other.start()
    wait_for(lambda: _hint_subscriptions(r) == 1 and hub.subscriber_count == 1)
    # When a reader watches a new key, and an event arrives on it only once the reader is registered
    got: list[float] = []

    def reader() -> None:
        for event in one_by_one(follow(hub, r, "llm:gen:{fresh}:out", "0", keepalive_s=20, max_duration_s=20)):
            if event is not None:
                got.append(time.monotonic())
                return

    thread = threading.Thread(target=reader)
    thread.start()
    # The reader's own catch-up found nothing: the event can only come through the hub's read, which must have
    # been woken to take the new key in (it now waits for both keys' hints, on its one subscription).
    wait_for(lambda: hub.subscriber_count == 2, timeout_s=5)
    assert _hint_subscriptions(r) == 1
    sent = time.monotonic()
    _append(r, "llm:gen:{fresh}:out", "done", 0)
    thread.join(15)
    # Then it arrives well before the blocked read would have timed out
    assert got and got[0] - sent < 5
    _append(r, "llm:gen:{idle}:out", "done", 0)
    other.join(5)


def _hint_subscriptions(r: redis.Redis) -> int:
    """How many hint channels the hub's connections are subscribed to."""
    return sum(int(c.get("sub", 0)) for c in r.client_list() if c.get("name") == "hub-test")


def test_one_redis_connection_reads_for_every_client(hub: Hub, r: redis.Redis) -> None:
    keys_ = [f"llm:gen:{{c{i}}}:out" for i in range(30)]
    threads = [threading.Thread(target=_collect, args=(hub, r, k), daemon=True) for k in keys_ for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: hub.subscriber_count == 90, timeout_s=5)

    # Then the hub holds two Redis connections for all 90 clients: its reads, and one subscription (to the one
    # channel of every stream's hints)
    def hub_connections() -> list[dict[str, str]]:
        return [c for c in r.client_list() if c.get("name") == "hub-test"]

    wait_for(lambda: any(int(c.get("sub", 0)) == 1 for c in hub_connections()))
    assert hub.watched_keys == 30
    assert len(hub_connections()) == 2
    for key in keys_:
        _append(r, key, "done", 0)
    for thread in threads:
        thread.join(5)
    assert hub.subscriber_count == 0


def test_keepalives_are_yielded_while_nothing_happens(hub: Hub, r: redis.Redis) -> None:
    stream = one_by_one(follow(hub, r, "llm:gen:{quiet}:out", "0", keepalive_s=0.05, max_duration_s=0.3))
    items = list(stream)
    assert items and all(item is None for item in items)


def test_delivery_latency_is_observed_once_per_live_token_not_per_reader(hub: Hub, r: redis.Redis) -> None:
    # Given a generation with one token already written (a replay for whoever joins now)
    key = "llm:gen:{lat}:out"
    r.xadd(key, {"event": "token", "data": orjson.dumps({"seq": 0, "content": "a", "ts": time.time()}).decode()})

    def observed() -> float:
        return REGISTRY.get_sample_value("tokenbridge_delivery_latency_seconds_count") or 0.0

    before = observed()
    readers = [threading.Thread(target=_collect, args=(hub, r, key), daemon=True) for _ in range(3)]
    for reader in readers:
        reader.start()
    wait_for(lambda: hub.subscriber_count == 3)
    # When two live tokens and the end arrive while three readers follow
    for seq in (1, 2):
        r.xadd(key, {"event": "token", "data": orjson.dumps({"seq": seq, "content": "b", "ts": time.time()}).decode()})
        r.publish(keys.OUT_HINTS, key)
    _append(r, key, "done", 3)
    for reader in readers:
        reader.join(5)
    # Then the histogram counted the two live tokens once each: not the replayed one, not once per reader
    assert observed() - before == 2


class _Outage:
    """A reader of a Redis that cannot answer until ``up`` is set, then has nothing new."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.tries = 0

    def read(self, streams: object, **_: object) -> list[object]:
        self.tries += 1
        if not self.up.is_set():
            raise redis.ConnectionError("Connection refused.")
        time.sleep(0.01)  # a fixed wait standing in for a blocking read that finds nothing
        return []

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_outage_logs_a_warning_per_growing_wait_then_one_for_all_the_tries(caplog: pytest.LogCaptureFixture) -> None:
    # Given a hub watching a stream of a Redis that cannot answer
    reader = _Outage()
    hub = Hub(reader, block_ms=50)  # type: ignore[arg-type]
    caplog.set_level("WARNING", logger="app.hub")
    sub, _ = hub.subscribe("llm:gen:{a}:out", "0")
    try:
        # When it tries for a second and a half
        wait_for(lambda: reader.tries >= 6, timeout_s=5)
        warnings = [r.getMessage() for r in caplog.records if r.name == "app.hub"]
        # Then it logged the 0.1 s wait, and the longest one once, saying it goes on at that pace
        assert len(warnings) == 2, warnings
        assert warnings[-1].endswith("retrying in 0.2s, then as often until it answers.")
        # And when Redis answers again, it says so once, with how long it did not
        caplog.set_level("INFO", logger="app.hub")
        reader.up.set()
        wait_for(lambda: hub.healthy, timeout_s=5)
        wait_for(lambda: any("Hub reads again after" in r.getMessage() for r in caplog.records), timeout_s=5)
        again = [r.getMessage() for r in caplog.records if "Hub reads again" in r.getMessage()]
        assert len(again) == 1 and again[0].endswith(" tries)."), again
        # And the next outage is logged again
        reader.up.clear()
        wait_for(lambda: len([r for r in caplog.records if r.levelname == "WARNING"]) >= 3, timeout_s=5)
    finally:
        hub.unsubscribe(sub)
        hub.stop()


def test_a_group_read_of_pending_entries_is_followed_by_a_read_of_the_new_ones(r: redis.Redis) -> None:
    # Given a consumer group's reader that has just reconnected (its sweep is due) and a raw stream with an entry
    # written while it was away, whose hint it never got
    key = "llm:gen:{pending}:raw"
    r.xgroup_create(key, "g", id="0", mkstream=True)
    r.xadd(key, {"type": "token", "data": "{}"})
    reader = NotifiedReader(r, sweep_s=30, hints=keys.RAW_HINTS)
    try:
        # When its first read after the reconnect asks for its pending entries, as a consumer that resyncs does
        assert reader.read({key: "0"}, count=10, block_ms=10, group=("g", "c")) == [(key, [])]
        # Then its next read of new entries gets the one written meanwhile at once, not after the 30 s sweep
        started = time.monotonic()
        reply = reader.read({key: ">"}, count=10, block_ms=5_000, group=("g", "c"))
        assert reply and reply[0][0] == key and len(reply[0][1]) == 1
        assert time.monotonic() - started < 1
    finally:
        reader.close()

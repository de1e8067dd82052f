"""Every Redis key tokenbridge uses, built in one place.

All keys of one generation share the hash tag ``{G}`` so they live in one slot of a Redis Cluster.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

WORK_STREAM = "llm:work"
CONSUMERS_ZSET = "llm:consumers"
# Celery workers' heartbeats (name -> last stamp, ms): ``bridge.liveness``.
WORKERS_ZSET = "llm:workers"
DEAD_LETTERS = "llm:dead"
STATS_PREFIX = "llm:stats"
# Web processes publishing reader counts (sorted set, score = last heartbeat).
PRESENCE_PROCESSES = "llm:presence:web"
# A channel nobody listens to: a message on it is a cheap write that replicas receive (see bridge/replication.py).
REPLICATION_MARK = "llm:replication"
# The consumer that evaluates alert rules (a lease), and the last status it saw.
ALERTS_LEADER = "llm:alerts:leader"
ALERTS_STATE = "llm:alerts:state"
# Flask-Limiter's request counters.
RATELIMIT_PREFIX = "llm:ratelimit"
# On a single Redis, the channels of the writers' hints (``bridge.scripts``): the payload names the streams written.
# Raw streams and the work stream (the consumers listen); ``:out`` streams of generations and sessions (web).
RAW_HINTS = "llm:hints:raw"
OUT_HINTS = "llm:hints:out"
# The version of the key layout the data in this Redis is written in (an integer, ``bridge.layout``).
LAYOUT = "llm:layout"


def budget_minute(key_name: str, minute: int) -> str:
    """Tokens an API key committed in one minute (UNIX time // 60); both windows share the key's hash tag."""
    return f"llm:budget:{{{key_name}}}:m:{minute}"


def budget_day(key_name: str, day: int) -> str:
    """Tokens an API key committed in one day (UNIX time // 86,400)."""
    return f"llm:budget:{{{key_name}}}:d:{day}"


def response_cache(model: str, digest: str) -> str:
    """A cached answer of ``model`` to the request whose digest is ``digest``."""
    return f"llm:cache:{{{model}}}:{digest}"


def gen_meta(generation_id: str) -> str:
    return f"llm:gen:{{{generation_id}}}:meta"


def gen_raw(generation_id: str) -> str:
    return f"llm:gen:{{{generation_id}}}:raw"


def gen_out(generation_id: str) -> str:
    return f"llm:gen:{{{generation_id}}}:out"


def gen_text(generation_id: str) -> str:
    """The text of the generation so far (since its last restart), appended by each commit."""
    return f"llm:gen:{{{generation_id}}}:text"


def gen_cancel(generation_id: str) -> str:
    return f"llm:gen:{{{generation_id}}}:cancel"


def gen_lease(generation_id: str) -> str:
    return f"llm:gen:{{{generation_id}}}:lease"


def gen_request(generation_id: str) -> str:
    """The request as submitted (JSON): read by the task's claim and the cache processor; kept for the resume window
    after the end (the ``:meta`` hash stays small without it)."""
    return f"llm:gen:{{{generation_id}}}:request"


def gen_end(generation_id: str) -> str:
    """The generation's terminal event as readers got it (``<event> <id> <data JSON>``), kept for the retention period:
    a reader after the resume window gets it after a ``reset`` with the whole text."""
    return f"llm:gen:{{{generation_id}}}:end"


def gen_replay(generation_id: str) -> str:
    """An operator's decision on the generation's held dead letter: ``replay:<entry id>`` or ``drop:<entry id>``."""
    return f"llm:gen:{{{generation_id}}}:replay"


def generation_keys(generation_id: str) -> tuple[str, ...]:
    """Every key of one generation, for expiry."""
    return (
        gen_meta(generation_id),
        gen_raw(generation_id),
        gen_out(generation_id),
        gen_text(generation_id),
        gen_cancel(generation_id),
        gen_lease(generation_id),
        gen_replay(generation_id),
        gen_request(generation_id),
        gen_end(generation_id),
    )


@cache
def work_streams(shards: int) -> tuple[str, ...]:
    """The shards of the work stream: ``llm:work`` alone, or ``llm:work:{tag}`` spread evenly over the slots.

    Shard ``i`` of ``n`` gets the first tag whose slot lies in the ``i``-th ``n``-th of the slot range, so that
    a cluster whose nodes hold contiguous slot ranges (what ``redis-cli --cluster create`` makes) carries an
    even share of the shards on each node.
    """
    if shards == 1:
        return (WORK_STREAM,)
    streams = []
    for shard in range(shards):
        low = shard * REDIS_CLUSTER_HASH_SLOTS // shards
        high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        tag = next(f"w{shard}.{n}" for n in range(1_000_000) if low <= key_slot(f"w{shard}.{n}".encode()) < high)
        streams.append(f"{WORK_STREAM}:{{{tag}}}")
    return tuple(streams)


def work_stream_for(generation_id: str, shards: int) -> str:
    """The work-stream shard that hands ``generation_id`` to a consumer."""
    streams = work_streams(shards)
    return streams[zlib.crc32(generation_id.encode()) % len(streams)]


def session_generations(session_id: str) -> str:
    """List of the ids of the generations started in a session, in order: a generation's place in it is its
    ``session_n``. (A list keeps a few ids in a few hundred bytes; a stream takes a 4 KB node from its first entry.)"""
    return f"llm:session:{{{session_id}}}:generations"


def session_index(session_id: str) -> str:
    """Stream of the generations of a session started before ``session_generations`` (read only: it expires)."""
    return f"llm:session:{{{session_id}}}"


def session_out(session_id: str) -> str:
    """Stream of every client event of every generation in a session, in the order they were committed: each entry
    points at the event in its generation's ``:out`` (``n``: the generation's place in the session's list, ``i``: the
    event's ``:out`` id, ``e``: the event name unless ``token``)."""
    return f"llm:session:{{{session_id}}}:out"


def is_session_out(key: str) -> bool:
    return key.startswith("llm:session:") and key.endswith(":out")


def session_owner(session_id: str) -> str:
    """The owner (API key owner) of a session: set by its first generation, checked by every later one."""
    return f"llm:session:{{{session_id}}}:owner"


def session_copied(session_id: str) -> str:
    """The ``:out`` id of the last event of each generation added to the session stream (Redis Cluster only)."""
    return f"llm:session:{{{session_id}}}:copied"


def idempotency(principal: str, key_hash: str) -> str:
    """The generation created for one Idempotency-Key of one API key."""
    return f"llm:idempotency:{principal}:{key_hash}"


def key_running(api_key_name: str) -> str:
    """Generations of an API key running now (sorted set, score = when the slot lapses)."""
    return f"llm:key:{api_key_name}:running"


def user_running(api_key_name: str, user: str) -> str:
    """Generations of one end user of an API key running now (sorted set, score = when the slot lapses). ``user``
    is the user as generations record it (``bridge.generation.recorded_user``), named by a digest in the key."""
    return f"llm:key:{api_key_name}:user:{_user_tag(user)}:running"


def user_budget_name(api_key_name: str, user: str) -> str:
    """The name an end user's token budget of an API key is kept under (``budget_minute``, ``budget_day``)."""
    return f"{api_key_name}:user:{_user_tag(user)}"


def _user_tag(user: str) -> str:
    # Any text of a request makes a plain key: no hash tag braces, no separators, a bounded length.
    return hashlib.sha256(user.encode()).hexdigest()[:32]


def model_running(model: str) -> str:
    """Generations of a model running now (sorted set, score = when the slot expires)."""
    return f"llm:model:{model}:running"


def presence_process(process_id: str) -> str:
    """Readers of one web process: ``g:<generation>`` / ``s:<session>`` -> count."""
    return f"{PRESENCE_PROCESSES}:{process_id}"


def model_circuit(model: str) -> str:
    """A model's circuit breaker: ``failures`` in a row, ``open_until`` (ms)."""
    return f"llm:model:{model}:circuit"


def consumer_metrics(consumer_name: str) -> str:
    """A consumer's Prometheus exposition text, pushed every few seconds with a short expiry and served by web's
    ``/metrics`` (``bridge.metrics_relay``)."""
    return f"llm:metrics:consumer:{{{consumer_name}}}"


def stats(model: str) -> str:
    return f"{STATS_PREFIX}:{model}"


def durable_stream(name: str, part: str) -> str:
    """A key of a stream created over the Durable Streams protocol (``bridge.durable_store``): ``meta`` (hash),
    ``out`` (its messages, read by the hub like a generation's) or ``producers`` (hash). The name is any text of a
    URL: the hash tag is a digest of it."""
    return f"llm:ds:{{{hashlib.sha256(name.encode()).hexdigest()[:32]}}}:{part}"


def generation_id_from_key(key: str) -> str:
    """The generation id inside a ``llm:gen:{G}:...`` key."""
    return _tag(key)


def session_id_from_key(key: str) -> str:
    """The session id inside a ``llm:session:{S}:...`` key."""
    return _tag(key)


def _tag(key: str) -> str:
    start = key.index("{") + 1
    return key[start : key.index("}", start)]

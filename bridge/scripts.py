"""Lua scripts that make producer writes atomic and fenced.

Every script touches only the keys of one generation (one hash slot). A write is accepted only from the
attempt that ``:meta`` names as current, and never after a terminal entry: that is the fence that keeps a
redelivered or stale task from interleaving with the live one.

Every script that appends to a stream also sends a hint naming the stream: readers wait for hints instead of
blocking on every key they watch (``bridge.cluster``), so that a read costs what it brings back, not what it
watches. The scripts are written with ``HINT(key)`` where a hint goes, and each runs as the Lua for its Redis
(``variant``): on a cluster, a message on the key's own channel, from the node that holds it; on a single
Redis, the key as the payload of one shared channel per kind of stream (``keys.RAW_HINTS``, ``keys.OUT_HINTS``).
The writes of every token (``WRITE``, ``COMMIT``) say ``HINT_BATCHED(key)``: on a single Redis their hints are
sent by ``run_batch``, one message per flush naming every stream it wrote (``Call.hints``), instead of one per
generation.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from typing import Any

import redis
import redis.client
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import NoScriptError

from bridge import keys as key_names
from bridge.cluster import MOVING, refresh_if_moved

# KEYS: meta, lease, raw, request   ARGV: lease_ms, now, maxlen, reason, worker, then the models claimed only after a
# check. ``worker`` (the claiming process's name in ``llm:workers``, or '') is kept in ``:meta``: the consumers release
# the attempt's lease when that worker's heartbeat stops (``bridge.liveness``).
# Returns {attempt (1, 2, …) or refusal, the stored request}: -3 unknown, -2 finished, -1 held by a live attempt,
# -4 its model is one of those to check first (nothing claimed). The request comes with the claim so that a task
# starts in one round trip.
CLAIM_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-3, false} end
local state = redis.call('HMGET', KEYS[1], 'terminal', 'request', 'model')
if state[1] then return {-2, false} end
-- The request has a key of its own; ``:meta`` held it before.
state[2] = redis.call('GET', KEYS[4]) or state[2]
for i = 6, #ARGV do
  if ARGV[i] == state[3] then return {-4, state[2]} end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-1, state[2]} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('SET', KEYS[2], attempt, 'PX', ARGV[1])
redis.call('HSET', KEYS[1], 'started_at', ARGV[2], 'wseq', 0, 'worker', ARGV[5])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
if attempt > 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', 'restart', 'attempt', attempt,
             'data', cjson.encode({reason = ARGV[4]}))
  HINT(KEYS[3])
end
return {attempt, state[2]}
"""

# KEYS: meta, lease, raw, cancel   ARGV: attempt, lease_ms, maxlen, batch, renew, then type/data pairs
# Returns the number of entries written, -1 fenced, -2 cancelled, -4 this batch was already written, -5 an
# earlier batch is missing (acknowledged by a primary that died before its replica had it: the attempt must
# start again rather than leave a hole in the text).
# ``batch`` numbers the writes of an attempt (1, 2, …; 0 for a heartbeat): a write retried after a lost
# reply is recognised and not applied twice. The lease is renewed only when ``renew`` is 1 (the writer asks
# for it on a timer, a fraction of the lease time): a token costs no lease write. A claim changes
# ``attempt`` and an end sets ``terminal``, so these two fields alone fence a stale attempt off.
WRITE = """
local meta, lease, raw, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local attempt = ARGV[1]
local batch = tonumber(ARGV[4])
local state = redis.call('HMGET', meta, 'attempt', 'wseq', 'terminal')
if state[1] ~= attempt or state[3] then return -1 end
if batch > 0 and batch <= tonumber(state[2] or '0') then return -4 end
if batch > tonumber(state[2] or '0') + 1 then return -5 end
if redis.call('EXISTS', cancel) == 1 then
  redis.call('DEL', lease)
  redis.call('XADD', raw, 'MAXLEN', '~', ARGV[3], '*', 'type', 'cancelled', 'attempt', attempt, 'data', '{}')
  redis.call('HSET', meta, 'terminal', 'cancelled')
  HINT(raw)
  return -2
end
local ending = ARGV[#ARGV - 1]
if ending == 'done' or ending == 'error' or ending == 'cancelled' then
  -- A write that does not grow memory comes first: Redis at maxmemory (noeviction) refuses a script only
  -- at its first write, so a batch that ends the generation gets through (bridge/memory.py).
  redis.call('DEL', lease)
end
local written = 0
local last_type = nil
for i = 6, #ARGV, 2 do
  redis.call('XADD', raw, 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[i], 'attempt', attempt, 'data', ARGV[i + 1])
  last_type = ARGV[i]
  written = written + 1
end
if batch > 0 then redis.call('HSET', meta, 'wseq', batch) end
if written > 0 then HINT_BATCHED(raw) end
if last_type == 'done' or last_type == 'error' or last_type == 'cancelled' then
  redis.call('HSET', meta, 'terminal', last_type)
  redis.call('DEL', lease)
elseif ARGV[5] == '1' then
  redis.call('SET', lease, attempt, 'PX', ARGV[2])
end
return written
"""

# Ends a generation whatever holds it (the supervisor and the poison handler use it); the live attempt, if
# any, is fenced off by the terminal marker.
# KEYS: meta, lease, raw   ARGV: type, data, maxlen      Returns 0 unknown id, -1 already finished, 1 written.
FAIL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return -1 end
local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
redis.call('DEL', KEYS[2])  -- a write first: Redis at maxmemory then lets the end through (bridge/memory.py)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[1], 'attempt', attempt, 'data', ARGV[2])
redis.call('HSET', KEYS[1], 'terminal', ARGV[1])
HINT(KEYS[3])
return 1
"""

# What the supervisor should do about a generation whose attempt may be dead.
# KEYS: meta, lease   ARGV: now_ms, max_attempts, queue_timeout_ms, resend_ms, max_resends
# Returns 0 nothing, 1 enqueue a new attempt (marked), 2 attempts exhausted, 3 not started in time,
# 4 an external producer went silent, 5 send the waiting attempt's task again (marked). Attempts are counted
# when they start (claim), not when enqueued: a new attempt that waits in a busy queue is given QUEUE_TIMEOUT
# to start. A task message can be lost between the queue and the claim (a worker killed, or cut off from
# Redis, after taking it): an attempt still waiting ``resend_ms`` after its task was last sent gets it sent
# again, at most ``max_resends`` times per attempt, the wait doubling each time. A copy too many is harmless:
# CLAIM_ATTEMPT refuses it once an attempt runs.
SUPERVISE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local now = tonumber(ARGV[1])
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local external = redis.call('HGET', KEYS[1], 'model') == 'external'
if external and attempt > 0 then return 4 end
local requeued_attempt = tonumber(redis.call('HGET', KEYS[1], 'requeued_attempt') or '-1')
local waiting_since
if attempt == 0 and requeued_attempt < 0 then
  waiting_since = tonumber(redis.call('HGET', KEYS[1], 'created_at') or '0') * 1000
elseif requeued_attempt == attempt then
  waiting_since = tonumber(redis.call('HGET', KEYS[1], 'requeued_at') or '0')
end
if waiting_since then
  if now - waiting_since > tonumber(ARGV[3]) then return 3 end
  local resend_ms = tonumber(ARGV[4])
  local resends = tonumber(redis.call('HGET', KEYS[1], 'resends') or '0')
  -- An external generation has no task: it waits for its producer's first token.
  if external or resend_ms <= 0 or resends >= tonumber(ARGV[5]) then return 0 end
  local sent_at = math.max(waiting_since, tonumber(redis.call('HGET', KEYS[1], 'sent_at') or '0'))
  if now - sent_at <= resend_ms * 2 ^ resends then return 0 end
  redis.call('HSET', KEYS[1], 'sent_at', ARGV[1], 'resends', resends + 1)
  return 5
end
if attempt >= tonumber(ARGV[2]) then return 2 end
-- The new attempt's task gets its own re-sends.
redis.call('HSET', KEYS[1], 'requeued_attempt', attempt, 'requeued_at', ARGV[1], 'resends', 0)
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
return 1
"""

# A task deferred by its model's concurrency limit is sent again by Celery itself (a retry): it tells SUPERVISE
# so, which then does not send a copy of a task that is alive.  KEYS: meta   ARGV: now_ms
MARK_SENT = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'terminal') == 0 then
  redis.call('HSET', KEYS[1], 'sent_at', ARGV[1])
end
return 0
"""

# Undoes SUPERVISE's mark when the new attempt could not be enqueued.  KEYS: meta   ARGV: attempt
UNMARK_REQUEUE = """
if redis.call('HGET', KEYS[1], 'requeued_attempt') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'requeued_attempt', 'requeued_at')
  redis.call('HINCRBY', KEYS[1], 'requeues', -1)
end
return 0
"""

# Ends a generation that no live attempt holds (queued, or its worker is gone).
# KEYS: meta, lease, raw, cancel   ARGV: type, data, maxlen, cancel_ttl_ms
# Returns 0 unknown id, -1 already finished, 1 terminal written, 2 cancel requested from the live attempt.
ABORT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return -1 end
-- An external producer's lease only measures its silence: nobody would read a cancel request.
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('HGET', KEYS[1], 'model') ~= 'external' then
  if ARGV[1] == 'cancelled' then
    redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
    return 2
  end
  return -1
end
local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[1], 'attempt', attempt, 'data', ARGV[2])
redis.call('HSET', KEYS[1], 'terminal', ARGV[1])
HINT(KEYS[3])
return 1
"""

# Appends a batch of an external producer's tokens, once: ``index`` is the position of the batch's first
# token; tokens already accepted are skipped, a batch that would leave a gap is refused.
# KEYS: meta, raw, lease   ARGV: index, maxlen, idle_ms, ts, tokens...
# Returns {status, next_index}: 0 unknown, -5 not external, -1 finished, -2 gap, 1 duplicate, 2 appended.
EXTERNAL_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
if redis.call('HGET', KEYS[1], 'model') ~= 'external' then return {-5, 0} end
local next_index = tonumber(redis.call('HGET', KEYS[1], 'ext_next') or '0')
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return {-1, next_index} end
local index = tonumber(ARGV[1])
local count = #ARGV - 4
if index > next_index then return {-2, next_index} end
if index + count <= next_index then return {1, next_index} end
if redis.call('HGET', KEYS[1], 'attempt') == '0' then
  redis.call('HSET', KEYS[1], 'attempt', 1, 'started_at', ARGV[4], 'status', 'running')
end
local ts = tonumber(ARGV[4])
for i = next_index - index + 1, count do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'type', 'token', 'attempt', 1,
             'data', cjson.encode({content = ARGV[4 + i], ts = ts}))
end
redis.call('HSET', KEYS[1], 'ext_next', index + count)
HINT(KEYS[2])
redis.call('SET', KEYS[3], 1, 'PX', ARGV[3])
return {2, index + count}
"""

# Commits a batch of one generation, processed by a consumer: its client events into ``:out`` (same ids as
# in ``:raw``), the text they add to ``:text``, ``XACK :raw`` and the raw entries committed trimmed away (once
# over 100 are kept), the ``:meta`` fields the batch changed, and on a single Redis the events' place in the
# session stream (an entry that points at each: ``n`` the generation's place in the session, ``i`` the ``:out``
# id, ``e`` the event unless a token; a generation stored before pointers, with no ``session_n``, gets whole
# copies). After the terminal event the raw stream is deleted, ``:out``, ``:request`` and the session stream
# expire after the resume window, the record (``:meta``, ``:text``, and ``:end``, the terminal event as readers
# got it) after the retention time.
# A session stream written to while it was to expire (another generation of it ended) is kept again.
# A batch, or the part of one, that another consumer committed already (``:meta`` ``last_id`` is at or past it)
# writes nothing again. The batch is fenced on continuity: it was processed from the state of the commit that
# ``:meta`` ``last_id`` names (``base``: a consumer paused past a takeover holds an older one, and with it stale
# ``seq`` numbers), and no entry between that commit and the batch's first one is still pending (one delivered to
# another consumer, e.g. a stale owner's last read, would be skipped for good). Otherwise it writes and
# acknowledges nothing and returns -1: the consumer reloads its state and claims every pending entry, or lets go.
# KEYS: out, raw, meta, text, cancel, lease, request, end [, session out, session generations]
# ARGV: group, maxlen, retention_ms (0: not the end), window_ms, generation_id, session_n ('' : none), n_outs,
#       n_acked, base ('' : none yet), end ('<event> <id> <data>' of the terminal event, or ''),
#       then id, event, data, content of each out, then the acked ids, then meta field/value pairs.
# Returns the number of events written, or -1 when refused.
COMMIT = """
local maxlen, retention, window, gid, sn = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local n_outs, n_acked = tonumber(ARGV[7]), tonumber(ARGV[8])
local last = redis.call('HGET', KEYS[3], 'last_id')
local first_acked = 11 + 4 * n_outs
if (last or '') ~= ARGV[9] then return -1 end
local start = last and ('(' .. last) or '-'
local gap = redis.pcall('XPENDING', KEYS[2], ARGV[1], start, '(' .. ARGV[first_acked], 1)
if gap.err == nil and #gap > 0 then return -1 end
local function after(a, b)
  if not b then return true end
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  if tonumber(ams) ~= tonumber(bms) then return tonumber(ams) > tonumber(bms) end
  return tonumber(aseq) > tonumber(bseq)
end
local session = #KEYS > 8
-- The end of a generation gets through Redis at maxmemory: see WRITE (and PEXPIRE comes below anyway).
if retention > 0 then redis.call('PEXPIRE', KEYS[5], retention) end
local parts = {}
local written = 0
for i = 11, first_acked - 1, 4 do
  local id, event, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if after(id, last) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, id, 'event', event, 'data', data)
    if session and sn == '' then
      local tagged = string.sub(data, 1, -2) .. ',"generation_id":"' .. gid .. '"}'
      redis.call('XADD', KEYS[9], 'MAXLEN', '~', maxlen, '*', 'event', event, 'data', tagged, 'entry_id', id)
    elseif session and event == 'token' then
      redis.call('XADD', KEYS[9], 'MAXLEN', '~', maxlen, '*', 'n', sn, 'i', id)
    elseif session then
      redis.call('XADD', KEYS[9], 'MAXLEN', '~', maxlen, '*', 'n', sn, 'i', id, 'e', event)
    end
    if event == 'restart' then
      parts = {}
      redis.call('SET', KEYS[4], '')
    elseif ARGV[i + 3] ~= '' then
      parts[#parts + 1] = ARGV[i + 3]
    end
    written = written + 1
  end
end
if session and written > 0 and redis.call('PTTL', KEYS[9]) > 0 then redis.call('PERSIST', KEYS[9]) end
if #parts > 0 then redis.call('APPEND', KEYS[4], table.concat(parts)) end
local last_acked = ARGV[first_acked + n_acked - 1]
redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, first_acked, first_acked + n_acked - 1))
if after(last_acked, last) then
  local fields = {'last_id', last_acked}
  for i = first_acked + n_acked, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(fields))
end
if retention > 0 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], window)
  for i = 3, 6 do redis.call('PEXPIRE', KEYS[i], retention) end
  redis.call('PEXPIRE', KEYS[7], window)
  if ARGV[10] ~= '' then redis.call('SET', KEYS[8], ARGV[10], 'PX', retention) end
  if session then
    redis.call('PEXPIRE', KEYS[9], window)
    redis.call('PEXPIRE', KEYS[10], retention * 2)
  end
elseif redis.call('XLEN', KEYS[2]) > 100 then
  -- Raw entries committed go, a node's worth at a time (a trim is a write the AOF keeps: not one per commit).
  local ms, seq = string.match(last_acked, '(%d+)-(%d+)')
  redis.call('XTRIM', KEYS[2], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
end
if written > 0 then HINT_BATCHED(KEYS[1]) end
if session and written > 0 then HINT_BATCHED(KEYS[9]) end
return written
"""

# A submission on a single Redis, in one round trip: the model's circuit, the session's owner, the API key's cap on
# running generations and the cap of its end user (the request's ``user``), then the generation stored (its record,
# its request, its raw stream opened to the processors, its place in the session's list, which ``:meta``
# ``session_n`` keeps) and its work entry (and the consumers' hint). Nothing is written when a check refuses.
# KEYS: meta, raw, work, session generations (a list), session owner, circuit, running (a key never written when
#       no cap), request, user running (the same when no cap)
# ARGV: group, session_ttl_ms, index_ttl_ms, owner ('': the caller checked it), generation_id, now_ms, check_circuit,
#       running_limit, running_expire_ms (of both caps), request, user_running_limit, then the meta field/value pairs.
# Returns {'created'}, {'circuit_open'}, {'session_taken'}, {'too_many_running'} or {'user_too_many_running'}.
SUBMIT = """
local now = tonumber(ARGV[6])
if ARGV[7] == '1' then
  local open_until = redis.call('HGET', KEYS[6], 'open_until')
  if open_until and tonumber(open_until) > now then return {'circuit_open'} end
end
if ARGV[4] ~= '' and not redis.call('SET', KEYS[5], ARGV[4], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[5]) ~= ARGV[4] then return {'session_taken'} end
  redis.call('PEXPIRE', KEYS[5], ARGV[2])
end
local limit, user_limit = tonumber(ARGV[8]), tonumber(ARGV[11])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
  if redis.call('ZCARD', KEYS[7]) >= limit then return {'too_many_running'} end
end
if user_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now)
  if redis.call('ZCARD', KEYS[9]) >= user_limit then return {'user_too_many_running'} end
  redis.call('ZADD', KEYS[9], now + tonumber(ARGV[9]), ARGV[5])
end
if limit > 0 then redis.call('ZADD', KEYS[7], now + tonumber(ARGV[9]), ARGV[5]) end
local place = redis.call('RPUSH', KEYS[4], ARGV[5]) - 1
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[1], 'session_n', place, unpack(ARGV, 12))
redis.call('SET', KEYS[8], ARGV[10])
redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
redis.call('XADD', KEYS[3], '*', 'generation_id', ARGV[5])
HINT(KEYS[3])
return {'created'}
"""

# A place among the generations of one model that may run at once (the registry's ``concurrency``).
# KEYS: running zset   ARGV: generation_id, now_ms, limit, expire_ms      Returns 1 taken, 0 full.
TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[4]), ARGV[1])
return 1
"""

# KEYS: lease   ARGV: attempt      Deletes the lease only if this attempt holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Adds a batch of one generation's committed client events to its session stream, once: an event at or before the
# last one added (by its ``:out`` id) is skipped, so a batch added again (after a takeover) adds nothing twice.
# Used where it cannot share a transaction with the generation's commit (Redis Cluster: the session is another
# slot), after the commit. The entries point at the events, as COMMIT's do (whole copies for a generation stored
# before pointers, with no ``session_n``).
# KEYS: session out, session copied (hash: generation -> last :out id added)
# ARGV: generation_id, maxlen, ttl_ms, session_n, then event, data (the whole copy; '' with a session_n), :out id
# of each event.   Returns the number of events appended.
SESSION_APPEND = """
local sn = ARGV[4]
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last and not string.match(last, '^%d+%-%d+$') then last = nil end
local function after(a, b)
  if not b then return true end
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  if tonumber(ams) ~= tonumber(bms) then return tonumber(ams) > tonumber(bms) end
  return tonumber(aseq) > tonumber(bseq)
end
local written = 0
for i = 5, #ARGV, 3 do
  local event, id = ARGV[i], ARGV[i + 2]
  if after(id, last) then
    if sn == '' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', event, 'data', ARGV[i + 1], 'entry_id', id)
    elseif event == 'token' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', sn, 'i', id)
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', sn, 'i', id, 'e', event)
    end
    last = id
    written = written + 1
  end
end
if last then redis.call('HSET', KEYS[2], ARGV[1], last) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if written > 0 and redis.call('PTTL', KEYS[1]) > 0 then redis.call('PERSIST', KEYS[1]) end
if written > 0 then HINT(KEYS[1]) end
return written
"""


_HINT = re.compile(r"HINT(_BATCHED)?\(([^()]*)\)")


@cache
def variant(source: str, cluster: bool) -> str:
    """The Lua that runs for a script written with ``HINT``/``HINT_BATCHED`` markers (see the module's docstring)."""

    def hint(match: re.Match[str]) -> str:
        batched, key = match.group(1), match.group(2)
        if cluster:
            return f"redis.call('PUBLISH', {key}, '')"
        if batched:
            return ""  # sent by run_batch for the whole flush
        channel = f"(string.sub({key}, -4) == ':out') and '{key_names.OUT_HINTS}' or '{key_names.RAW_HINTS}'"
        return f"redis.call('PUBLISH', {channel}, {key})"

    return _HINT.sub(hint, source)


def hint_channel(key: str) -> str:
    """The shared channel (single Redis) of a stream's hints."""
    return key_names.OUT_HINTS if key.endswith(":out") else key_names.RAW_HINTS


@cache
def sha(source: str) -> str:
    """The SHA1 that ``EVALSHA`` knows ``source`` by."""
    return hashlib.sha1(source.encode()).hexdigest()


@dataclass(slots=True)
class Call:
    """One run of a script, for ``run_batch``; ``hints``: the streams its ``HINT_BATCHED`` markers name."""

    source: str
    keys: list[str]
    args: list[Any]
    hints: tuple[str, ...] = ()


def run(client: redis.Redis, source: str, keys: list[str], args: list[Any], hints: tuple[str, ...] = ()) -> Any:
    """Run a script by its SHA, loading it on first use (per server).

    A pipeline cannot load a missing script between its commands: it sends the source with EVAL. Many calls
    go in one round trip with ``run_batch``.
    """
    if isinstance(client, ClusterPipeline | redis.client.Pipeline):
        cluster = isinstance(client, ClusterPipeline)
        return client.execute_command("EVAL", variant(source, cluster), len(keys), *keys, *args)  # type: ignore[no-untyped-call]
    if isinstance(client, RedisCluster):
        # The cluster client routes by key and follows MOVED and ASK by itself.
        lua = variant(source, True)
        try:
            return client.evalsha(sha(lua), len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(lua)
            return client.evalsha(sha(lua), len(keys), *keys, *args)
    return run_batch(client, [Call(source, keys, args, hints)], raise_on_error=True)[0]


def run_batch(client: redis.Redis, calls: list[Call], *, raise_on_error: bool = False) -> list[Any]:
    """Run many scripts in one round trip per node (the node of each call's first key); results in order.

    A call the server answered with an error has that error as its result (raised instead with
    ``raise_on_error``); a connection error raises. A script the server did not know yet is loaded and its
    calls sent again (a script that is not there did not run). On a cluster, a call whose slot moved away
    is sent again through the cluster client, which follows the move. On a single Redis, the hints of every
    call (``Call.hints``) follow in the same round trip: one message per channel.
    """
    results: list[Any] = [None] * len(calls)
    cluster = isinstance(client, RedisCluster)
    for node, indexes in _by_node(client, calls):
        node_calls = [calls[i] for i in indexes]
        replies = _send(node, node_calls, cluster)
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for source in {variant(calls[indexes[n]].source, cluster) for n in missing}:
                node.script_load(source)
            again = _send(node, [calls[indexes[n]] for n in missing], cluster)
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        if cluster and refresh_if_moved(client, replies):
            for n, reply in enumerate(replies):
                if isinstance(reply, MOVING):
                    call = calls[indexes[n]]
                    try:
                        replies[n] = run(client, call.source, call.keys, call.args)
                    except redis.ResponseError as exc:
                        replies[n] = exc
        for i, reply in zip(indexes, replies, strict=True):
            if raise_on_error and isinstance(reply, Exception):
                raise reply
            results[i] = reply
    return results


def _send(node: redis.Redis, calls: list[Call], cluster: bool) -> list[Any]:
    pipe = node.pipeline(transaction=False)
    hints: dict[str, list[str]] = {}
    for call in calls:
        lua = variant(call.source, cluster)
        pipe.execute_command("EVALSHA", sha(lua), len(call.keys), *call.keys, *call.args)  # type: ignore[no-untyped-call]
        if not cluster:
            for key in call.hints:
                hints.setdefault(hint_channel(key), []).append(key)
    for channel, names in hints.items():
        pipe.publish(channel, " ".join(names))
    replies: list[Any] = pipe.execute(raise_on_error=False)
    return replies[: len(calls)]


def _by_node(client: redis.Redis, calls: list[Call]) -> list[tuple[redis.Redis, list[int]]]:
    if not isinstance(client, RedisCluster):
        return [(client, list(range(len(calls))))]
    groups: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(client.get_node_from_key(call.keys[0]).name, []).append(i)
    return [(client.get_redis_connection(client.get_node(node_name=name)), group) for name, group in groups.items()]


# -- typed wrappers: each script's reply is decoded here, once, into an IntEnum ----------------------------


class Claim(IntEnum):
    """CLAIM_ATTEMPT's refusals (a claim that succeeds returns the new attempt's number, 1, 2, …)."""

    CHECK_FIRST = -4
    UNKNOWN = -3
    FINISHED = -2
    HELD = -1


class Write(IntEnum):
    """WRITE's reply: written (any number of entries, 0 for a heartbeat), fenced, cancelled, a repeat, or a
    gap (an earlier batch of the attempt is missing: lost in a failover)."""

    WRITTEN = 0
    FENCED = -1
    CANCELLED = -2
    REPEATED = -4
    GAP = -5


class Ended(IntEnum):
    """FAIL's and ABORT's reply (``REQUESTED``: ABORT only)."""

    UNKNOWN = 0
    FINISHED = -1
    WRITTEN = 1
    REQUESTED = 2


class Supervision(IntEnum):
    """SUPERVISE's verdict on a generation whose attempt may be dead."""

    NOTHING = 0
    REQUEUE = 1
    EXHAUSTED = 2
    QUEUE_TIMEOUT = 3
    PRODUCER_SILENT = 4
    RESEND = 5


class Append(IntEnum):
    """EXTERNAL_APPEND's status (the reply also carries the next index expected)."""

    UNKNOWN = 0
    NOT_EXTERNAL = -5
    FINISHED = -1
    GAP = -2
    DUPLICATE = 1
    APPENDED = 2


class Slot(IntEnum):
    """TAKE_SLOT's reply."""

    FULL = 0
    TAKEN = 1


class Commit(IntEnum):
    """COMMIT's reply: committed (any number of events, 0 when another consumer had written them all), or
    refused by its continuity fence (processed from a state that is not the last commit's)."""

    COMMITTED = 0
    REFUSED = -1


def decode_commit(reply: Any) -> Commit | None:
    """COMMIT's reply as a ``Commit``; None for an error a pipeline answered with (the caller checks it)."""
    if isinstance(reply, Exception):
        return None
    return Commit.REFUSED if reply == Commit.REFUSED else Commit.COMMITTED


def claim_attempt(
    client: redis.Redis,
    generation_id: str,
    *,
    lease_ms: int,
    max_length: int,
    reason: str,
    check_first: Sequence[str] = (),
    worker: str = "",
) -> tuple[int, str | None]:
    """Start a new attempt: its number (1, 2, …), or the ``Claim`` that refused it; and the stored request.

    A generation of a model in ``check_first`` is not claimed (``Claim.CHECK_FIRST``): its caller checks first.
    """
    generation_keys = [key_names.gen_meta(generation_id), key_names.gen_lease(generation_id)]
    generation_keys += [key_names.gen_raw(generation_id), key_names.gen_request(generation_id)]
    args = [lease_ms, repr(time.time()), max_length, reason, worker, *check_first]
    result, request = run(client, CLAIM_ATTEMPT, generation_keys, args)
    attempt = int(result)
    return (attempt if attempt > 0 else Claim(attempt)), (request or None)


def write_call(generation_id: str, args: list[Any]) -> Call:
    """A run of WRITE (ARGV as the script documents it), for ``run`` or ``run_batch`` (a write loop)."""
    generation_keys = [
        key_names.gen_meta(generation_id),
        key_names.gen_lease(generation_id),
        key_names.gen_raw(generation_id),
        key_names.gen_cancel(generation_id),
    ]
    # A heartbeat writes no entry (a cancel it finds is hinted by the script itself).
    hints = (generation_keys[2],) if len(args) > 5 else ()
    return Call(WRITE, generation_keys, args, hints)


def decode_write(reply: Any) -> Write:
    """WRITE's reply: the entries it wrote are not needed, only whether it wrote."""
    result = int(reply)
    return Write.WRITTEN if result >= 0 else Write(result)


def fail(client: redis.Redis, generation_id: str, event_type: str, data: bytes, *, max_length: int) -> Ended:
    """Write a terminal entry whatever attempt holds the generation (the attempt is fenced off)."""
    generation_keys = [key_names.gen_meta(generation_id), key_names.gen_lease(generation_id)]
    generation_keys.append(key_names.gen_raw(generation_id))
    return Ended(int(run(client, FAIL, generation_keys, [event_type, data, max_length])))


def abort(
    client: redis.Redis, generation_id: str, event_type: str, data: bytes, *, max_length: int, cancel_ttl_ms: int
) -> Ended:
    """End a generation no live attempt holds, or ask the live attempt to cancel (``event_type`` cancelled)."""
    generation_keys = [
        key_names.gen_meta(generation_id),
        key_names.gen_lease(generation_id),
        key_names.gen_raw(generation_id),
        key_names.gen_cancel(generation_id),
    ]
    return Ended(int(run(client, ABORT, generation_keys, [event_type, data, max_length, cancel_ttl_ms])))


def supervise(
    client: redis.Redis,
    generation_ids: Sequence[str],
    *,
    max_attempts: int,
    queue_timeout_ms: int,
    resend_ms: int = 0,
    max_resends: int = 0,
) -> dict[str, Supervision]:
    """SUPERVISE for many generations in one round trip per node; a generation whose slot is moving is left out
    (supervised again at the next heartbeat, on its new node). ``resend_ms`` 0: a waiting task is never sent
    again."""
    args = [int(time.time() * 1000), max_attempts, queue_timeout_ms, resend_ms, max_resends]
    calls = [Call(SUPERVISE, [key_names.gen_meta(gid), key_names.gen_lease(gid)], args) for gid in generation_ids]
    verdicts: dict[str, Supervision] = {}
    for gid, result in zip(generation_ids, run_batch(client, calls), strict=True):
        if isinstance(result, MOVING):
            continue
        if isinstance(result, Exception):
            raise result
        verdicts[gid] = Supervision(int(result))
    return verdicts


def mark_sent(client: redis.Redis, generation_id: str) -> None:
    """Note that the generation's task was just sent again (a deferral's retry): SUPERVISE need not re-send it."""
    run(client, MARK_SENT, [key_names.gen_meta(generation_id)], [int(time.time() * 1000)])


def unmark_requeue(client: redis.Redis, generation_id: str, attempt: str) -> None:
    """Undo SUPERVISE's requeue mark of ``attempt`` (its new attempt could not be enqueued)."""
    run(client, UNMARK_REQUEUE, [key_names.gen_meta(generation_id)], [attempt])


def external_append(
    client: redis.Redis, generation_id: str, index: int, tokens: list[str], *, max_length: int, idle_ms: int
) -> tuple[Append, int]:
    """Append an external producer's tokens from position ``index``: the status and the next index expected."""
    generation_keys = [key_names.gen_meta(generation_id), key_names.gen_raw(generation_id)]
    generation_keys.append(key_names.gen_lease(generation_id))
    result: Any = run(
        client, EXTERNAL_APPEND, generation_keys, [index, max_length, idle_ms, repr(time.time()), *tokens]
    )
    return Append(int(result[0])), int(result[1])


def take_slot(client: redis.Redis, running_key: str, generation_id: str, *, limit: int, expire_ms: int) -> Slot:
    """A place for ``generation_id`` among at most ``limit`` in ``running_key``, lapsing after ``expire_ms``."""
    return Slot(int(run(client, TAKE_SLOT, [running_key], [generation_id, int(time.time() * 1000), limit, expire_ms])))


def release_lease(client: redis.Redis, generation_id: str, attempt: int) -> bool:
    """Delete the generation's lease if ``attempt`` holds it; whether it did."""
    return bool(run(client, RELEASE, [key_names.gen_lease(generation_id)], [attempt]))

"""Lua scripts that make producer writes atomic and fenced.

Every script touches only the keys of one generation (one hash slot). A write is accepted only from the
attempt that ``:meta`` names as current, and never after a terminal entry: that is the fence that keeps a
redelivered or stale task from interleaving with the live one.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.commands.core import Script

# KEYS: meta, lease, raw   ARGV: lease_ms, now, maxlen
CLAIM_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return -2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('SET', KEYS[2], attempt, 'PX', ARGV[1])
redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
if attempt > 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', 'restart', 'attempt', attempt,
             'data', cjson.encode({reason = ARGV[4]}))
end
return attempt
"""

# KEYS: meta, lease, raw, cancel   ARGV: attempt, lease_ms, maxlen, then type/data pairs
WRITE = """
local meta, lease, raw, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local attempt = ARGV[1]
if redis.call('HGET', meta, 'attempt') ~= attempt or redis.call('HEXISTS', meta, 'terminal') == 1 then
  return -1
end
local holder = redis.call('GET', lease)
if holder and holder ~= attempt then return -1 end
if redis.call('EXISTS', cancel) == 1 then
  redis.call('XADD', raw, 'MAXLEN', '~', ARGV[3], '*', 'type', 'cancelled', 'attempt', attempt, 'data', '{}')
  redis.call('HSET', meta, 'terminal', 'cancelled')
  redis.call('DEL', lease)
  return -2
end
local written = 0
local last_type = nil
for i = 4, #ARGV, 2 do
  redis.call('XADD', raw, 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[i], 'attempt', attempt, 'data', ARGV[i + 1])
  last_type = ARGV[i]
  written = written + 1
end
if last_type == 'done' or last_type == 'error' or last_type == 'cancelled' then
  redis.call('HSET', meta, 'terminal', last_type)
  redis.call('DEL', lease)
else
  redis.call('SET', lease, attempt, 'PX', ARGV[2])
end
return written
"""

# Ends a generation that no live attempt holds (queued, or its worker is gone).
# KEYS: meta, lease, raw, cancel   ARGV: type, data, maxlen, cancel_ttl_ms
# Returns 0 unknown id, -1 already finished, 1 terminal written, 2 cancel requested from the live attempt.
ABORT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if ARGV[1] == 'cancelled' then
    redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
    return 2
  end
  return -1
end
local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[1], 'attempt', attempt, 'data', ARGV[2])
redis.call('HSET', KEYS[1], 'terminal', ARGV[1])
return 1
"""

_scripts: dict[str, Script] = {}


def run(client: redis.Redis, source: str, keys: list[str], args: list[Any]) -> Any:
    """Run a script by its SHA, loading it on first use (per server)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = Script(client, source)
    return script(keys=keys, args=args, client=client)

-- Ends a generation whatever holds it (the supervisor and the poison handler use it); the live attempt, if
-- any, is fenced off by the terminal marker.
-- KEYS: meta, lease, raw   ARGV: type, data, maxlen      Returns 'unknown', 'finished' (already) or 'written'.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 'finished' end
local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
redis.call('DEL', KEYS[2])  -- a write first: Redis at maxmemory then lets the end through (bridge/memory.py)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[1], 'attempt', attempt, 'data', ARGV[2])
redis.call('HSET', KEYS[1], 'terminal', ARGV[1])
HINT(KEYS[3])
return 'written'

-- Ends a generation that no live attempt holds (queued, or its worker is gone).
-- KEYS: meta, lease, raw, cancel   ARGV: type, data, maxlen, cancel_ttl_ms
-- Returns 'unknown' (no such generation), 'finished' (already), 'written' (the terminal entry), 'cancel_requested'
-- (from the live attempt) or 'held' (a live attempt holds it and only a cancel can be asked of it).
if redis.call('EXISTS', KEYS[1]) == 0 then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 'finished' end
-- An external producer's lease only measures its silence: nobody would read a cancel request.
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('HGET', KEYS[1], 'model') ~= 'external' then
  if ARGV[1] == 'cancelled' then
    redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
    return 'cancel_requested'
  end
  return 'held'
end
local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[1], 'attempt', attempt, 'data', ARGV[2])
redis.call('HSET', KEYS[1], 'terminal', ARGV[1])
HINT(KEYS[3])
return 'written'

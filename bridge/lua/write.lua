-- KEYS: meta, lease, raw, cancel   ARGV: attempt, lease_ms, maxlen, batch, renew, then type/data pairs
-- Returns 'written', 'fenced', 'cancelled', 'repeated' (this batch was already written) or 'gap' (an earlier batch
-- is missing: acknowledged by a primary that died before its replica had it; the attempt must start again rather
-- than leave a hole in the text).
-- ``batch`` numbers the writes of an attempt (1, 2, …; 0 for a heartbeat): a write retried after a lost
-- reply is recognised and not applied twice. The lease is renewed only when ``renew`` is 1 (the writer asks
-- for it on a timer, a fraction of the lease time): a token costs no lease write. A claim changes
-- ``attempt`` and an end sets ``terminal``, so these two fields alone fence a stale attempt off.
local meta, lease, raw, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local attempt = ARGV[1]
local batch = tonumber(ARGV[4])
local state = redis.call('HMGET', meta, 'attempt', 'wseq', 'terminal')
if state[1] ~= attempt or state[3] then return 'fenced' end
if batch > 0 and batch <= tonumber(state[2] or '0') then return 'repeated' end
if batch > tonumber(state[2] or '0') + 1 then return 'gap' end
if redis.call('EXISTS', cancel) == 1 then
  redis.call('DEL', lease)
  redis.call('XADD', raw, 'MAXLEN', '~', ARGV[3], '*', 'type', 'cancelled', 'attempt', attempt, 'data', '{}')
  redis.call('HSET', meta, 'terminal', 'cancelled')
  HINT(raw)
  return 'cancelled'
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
return 'written'

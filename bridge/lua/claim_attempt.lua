-- KEYS: meta, lease, raw, request   ARGV: lease_ms, now, maxlen, reason, worker, then the models claimed only after a
-- check. ``worker`` (the claiming process's name in ``llm:workers``, or '') is kept in ``:meta``: the consumers release
-- the attempt's lease when that worker's heartbeat stops (``bridge.liveness``).
-- Returns {'claimed', the new attempt (1, 2, …), the stored request}, or a refusal: {'unknown'}, {'finished'},
-- {'held', request} (a live attempt holds it), {'check_first', request} (its model is one of those to check
-- first: nothing claimed). The request comes with the claim so that a task starts in one round trip.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local state = redis.call('HMGET', KEYS[1], 'terminal', 'request', 'model')
if state[1] then return {'finished'} end
-- The request has a key of its own; ``:meta`` held it before.
state[2] = redis.call('GET', KEYS[4]) or state[2]
for i = 6, #ARGV do
  if ARGV[i] == state[3] then return {'check_first', state[2]} end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'held', state[2]} end
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
return {'claimed', attempt, state[2]}

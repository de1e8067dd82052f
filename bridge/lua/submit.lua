-- A submission on a single Redis, in one round trip: the model's circuit, the session's owner, the API key's cap on
-- running generations and the cap of its end user (the request's ``user``), then the generation stored (its record,
-- its request, its raw stream opened to the processors, its place in the session's list, which ``:meta``
-- ``session_n`` keeps) and its work entry (and the consumers' hint), and its Celery task pushed onto the broker's
-- queue when the broker is this Redis. Nothing is written when a check refuses.
-- KEYS: meta, raw, work, session generations (a list), session owner, circuit, running (a key never written when
-- no cap), request, user running (the same when no cap), the broker's queue (the same when no task)
-- ARGV: group, session_ttl_ms, index_ttl_ms, owner ('': the caller checked it), generation_id, now_ms, check_circuit,
-- running_limit, running_expire_ms (of both caps), request, user_running_limit, the task's broker message ('': none),
-- then the meta field/value pairs.
-- Returns {'created'}, {'circuit_open'}, {'session_taken'}, {'too_many_running'} or {'user_too_many_running'}.
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
redis.call('HSET', KEYS[1], 'session_n', place, unpack(ARGV, 13))
redis.call('SET', KEYS[8], ARGV[10])
redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
redis.call('XADD', KEYS[3], '*', 'generation_id', ARGV[5])
if ARGV[12] ~= '' then redis.call('LPUSH', KEYS[10], ARGV[12]) end
HINT(KEYS[3])
return {'created'}

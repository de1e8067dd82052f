-- A place among the generations of one model that may run at once (the registry's ``concurrency``).
-- KEYS: running zset   ARGV: generation_id, now_ms, limit, expire_ms      Returns 'taken' or 'full'.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 'full'
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[4]), ARGV[1])
return 'taken'

-- A task deferred by its model's concurrency limit is sent again by Celery itself (a retry): it tells SUPERVISE
-- so, which then does not send a copy of a task that is alive.  KEYS: meta   ARGV: now_ms   Returns 'ok'.
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'terminal') == 0 then
  redis.call('HSET', KEYS[1], 'sent_at', ARGV[1])
end
return 'ok'

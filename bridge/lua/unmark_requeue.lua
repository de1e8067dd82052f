-- Undoes SUPERVISE's mark when the new attempt could not be enqueued.  KEYS: meta   ARGV: attempt   Returns 'ok'.
if redis.call('HGET', KEYS[1], 'requeued_attempt') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'requeued_attempt', 'requeued_at')
  redis.call('HINCRBY', KEYS[1], 'requeues', -1)
end
return 'ok'

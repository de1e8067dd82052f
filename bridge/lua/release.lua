-- KEYS: lease   ARGV: attempt      Deletes the lease only if this attempt holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

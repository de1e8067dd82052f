-- KEYS: lease   ARGV: attempt      Deletes the lease only if this attempt holds it: 'released', else 'fenced'.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 'released'
end
return 'fenced'

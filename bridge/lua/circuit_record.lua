-- A generation's outcome against its model's upstream, in the model's circuit.
-- KEYS: circuit hash   ARGV: failed (1/0), now_ms, threshold, cooldown_ms, forget_ms
-- Returns {'recorded', the failures in a row} (0 after a success); the circuit opens at ``threshold``.
if ARGV[1] == '0' then
  redis.call('DEL', KEYS[1])
  return {'recorded', 0}
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[2]) + tonumber(ARGV[4]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'recorded', failures}

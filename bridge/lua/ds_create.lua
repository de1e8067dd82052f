-- Creates a Durable Streams stream (PUT), or says whether the one at its name has the same configuration.
-- KEYS: meta, out (the stream of messages), producers
-- ARGV: name, content type, closed ('1' or ''), ttl_s ('' none), expires_at ('' none), expire_at_ms (0 none),
-- keep_ms (how long the keys live: the TTL, or the retention when neither is given; 0 with expire_at_ms), owner,
-- now_ms, forked_from ('' none), fork_offset, fork_sub_offset, then the initial entries as id/event/data triples
-- (id '*' for a new one; a fork's inherited entries keep their source's ids).
-- Returns {'created', tail id, closed} or {'exists', tail id, closed} (the same configuration: nothing written), or
-- {'conflict'} (another configuration, another owner's, or a deleted stream that forks still hold).
local meta, out = KEYS[1], KEYS[2]
if redis.call('EXISTS', meta) == 1 then
  local m = redis.call('HMGET', meta, 'type', 'closed', 'ttl', 'expires_at', 'owner', 'tail', 'forked_from',
                       'fork_offset', 'fork_sub', 'deleted')
  if m[1] == ARGV[2] and (m[2] or '') == ARGV[3] and (m[3] or '') == ARGV[4] and (m[4] or '') == ARGV[5]
      and (m[5] or '') == ARGV[8] and (m[7] or '') == ARGV[10] and (m[8] or '') == ARGV[11]
      and (m[9] or '') == ARGV[12] and not m[10] then
    return {'exists', m[6], m[2] or ''}
  end
  return {'conflict'}
end
local tail = '0-0'
for i = 13, #ARGV, 3 do
  tail = redis.call('XADD', out, ARGV[i], 'event', ARGV[i + 1], 'data', ARGV[i + 2])
end
-- A closed stream ends with a marker entry, never an offset: it wakes live readers (the hub reads entries only).
if ARGV[3] == '1' then redis.call('XADD', out, '*', 'event', 'closed', 'data', '') end
redis.call('HSET', meta, 'name', ARGV[1], 'type', ARGV[2], 'closed', ARGV[3], 'ttl', ARGV[4], 'expires_at', ARGV[5],
           'owner', ARGV[8], 'created_at', ARGV[9], 'tail', tail, 'forked_from', ARGV[10], 'fork_offset', ARGV[11],
           'fork_sub', ARGV[12])
local expire_at, keep = tonumber(ARGV[6]), tonumber(ARGV[7])
for _, key in ipairs({meta, out}) do
  if redis.call('EXISTS', key) == 1 then
    if expire_at > 0 then redis.call('PEXPIREAT', key, expire_at) elseif keep > 0 then redis.call('PEXPIRE', key, keep) end
  end
end
if tail ~= '0-0' or ARGV[3] == '1' then HINT(out) end
return {'created', tail, ARGV[3]}

-- Appends to a Durable Streams stream (POST), closes it, or both, as one step: the closed state first, then the
-- content type, then the idempotent producer's epoch and sequence, then Stream-Seq (the protocol's precedence).
-- KEYS: meta, out (the stream of messages), producers (producer id -> 'epoch seq')
-- ARGV: content type ('' for a request without a body: not checked), close ('1' or ''), stream_seq ('' none),
-- producer id ('' none), producer epoch, producer seq, keep_ms (0: the keys' expiry is left alone), then the
-- messages as event/data pairs.
-- Returns {'appended', tail, closed, epoch, seq}; {'unknown'}; {'closed', tail} (409); {'duplicate', tail, closed,
-- epoch, last seq} (a producer's retry, or the request that closed the stream, again: 204); {'conflict', tail} (the
-- content type differs); {'stale_epoch', epoch} (403); {'bad_epoch_seq'} (a new epoch not at 0: 400);
-- {'gap', expected, received} (409); {'seq_conflict'} (Stream-Seq not above the last: 409).
-- include lib/producer.lua
local meta, out, producers = KEYS[1], KEYS[2], KEYS[3]
local m = redis.call('HMGET', meta, 'type', 'closed', 'tail', 'sseq', 'closed_by')
if not m[1] then return {'unknown'} end
local tail, closed = m[3], m[2] == '1'
local pid, epoch, seq = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local has_body = #ARGV > 7
if closed then
  if pid ~= '' and m[5] == pid .. ' ' .. ARGV[5] .. ' ' .. ARGV[6] then
    return {'duplicate', tail, '1', ARGV[5], ARGV[6]}
  end
  if not has_body and ARGV[2] == '1' and pid == '' then return {'duplicate', tail, '1', '', ''} end
  return {'closed', tail}
end
if has_body and ARGV[1] ~= m[1] then return {'conflict', tail} end
if pid ~= '' then
  local refused, a, b = producer_check(producers, pid, epoch, seq)
  if refused == 'duplicate' then return {'duplicate', tail, '', ARGV[5], a} end
  if refused then return {refused, a, b} end
end
if ARGV[3] ~= '' and m[4] and ARGV[3] <= m[4] then return {'seq_conflict'} end
for i = 8, #ARGV, 2 do
  tail = redis.call('XADD', out, '*', 'event', ARGV[i], 'data', ARGV[i + 1])
end
redis.call('HSET', meta, 'tail', tail)
if ARGV[3] ~= '' then redis.call('HSET', meta, 'sseq', ARGV[3]) end
if pid ~= '' then redis.call('HSET', producers, pid, ARGV[5] .. ' ' .. ARGV[6]) end
if ARGV[2] == '1' then
  -- A marker entry after the last message, never an offset: it wakes live readers (the hub reads entries only).
  redis.call('XADD', out, '*', 'event', 'closed', 'data', '')
  redis.call('HSET', meta, 'closed', '1')
  if pid ~= '' then redis.call('HSET', meta, 'closed_by', pid .. ' ' .. ARGV[5] .. ' ' .. ARGV[6]) end
end
local keep = tonumber(ARGV[7])
if keep > 0 then
  for _, key in ipairs({meta, out, producers}) do redis.call('PEXPIRE', key, keep) end
else
  -- The record's expiry (a fixed time, or the retention) holds for its messages and producers too.
  local ttl = redis.call('PTTL', meta)
  if ttl > 0 then
    redis.call('PEXPIRE', out, ttl)
    if redis.call('EXISTS', producers) == 1 then redis.call('PEXPIRE', producers, ttl) end
  end
end
HINT(out)
return {'appended', tail, ARGV[2], ARGV[5], ARGV[6]}

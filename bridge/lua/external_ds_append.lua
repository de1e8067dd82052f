-- Appends a Durable Streams client's batch of tokens to an external generation (``POST /v1/stream/generations/{id}``),
-- at the position the generation has come to, once per idempotent producer batch (the protocol's epoch and sequence,
-- kept in ``:meta`` as ``dsp:<producer id>`` = 'epoch seq'), the producer's check and the append as one step.
-- KEYS: meta, raw, lease
-- ARGV: producer id ('' none), epoch, seq, maxlen, idle_ms, ts, tokens...
-- Returns {'appended', next_index, last id}; {'duplicate', last seq} (a batch the producer sent before); {'unknown'};
-- {'not_external'}; {'finished'}; {'stale_epoch', epoch}; {'bad_epoch_seq'}; {'gap', expected seq, received seq}.
-- include lib/external_tokens.lua
-- include lib/producer.lua
local meta = KEYS[1]
local m = redis.call('HMGET', meta, 'model', 'ext_next', 'terminal')
if not m[1] then return {'unknown'} end
if m[1] ~= 'external' then return {'not_external'} end
local pid, epoch, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local field = 'dsp:' .. pid
if pid ~= '' then
  local refused, a, b = producer_check(meta, field, epoch, seq)
  if refused then return {refused, a, b} end
end
if m[3] then return {'finished'} end
local next_index, last_id = tonumber(m[2] or '0'), ''
if #ARGV > 6 then
  next_index, last_id = external_tokens(meta, KEYS[2], KEYS[3], next_index, {unpack(ARGV, 7)}, 1, ARGV[4], ARGV[5],
                                        ARGV[6])
end
if pid ~= '' then redis.call('HSET', meta, field, ARGV[2] .. ' ' .. ARGV[3]) end
return {'appended', next_index, last_id}

-- Appends a batch of an external producer's tokens, once: ``index`` is the position of the batch's first
-- token; tokens already accepted are skipped, a batch that would leave a gap is refused.
-- KEYS: meta, raw, lease   ARGV: index, maxlen, idle_ms, ts, tokens...
-- Returns {status, next_index}, status 'unknown', 'not_external', 'finished', 'gap', 'duplicate' or 'appended'.
-- include lib/external_tokens.lua
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown', 0} end
if redis.call('HGET', KEYS[1], 'model') ~= 'external' then return {'not_external', 0} end
local next_index = tonumber(redis.call('HGET', KEYS[1], 'ext_next') or '0')
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return {'finished', next_index} end
local index = tonumber(ARGV[1])
local count = #ARGV - 4
if index > next_index then return {'gap', next_index} end
if index + count <= next_index then return {'duplicate', next_index} end
local tokens = {unpack(ARGV, 5)}
local written = external_tokens(KEYS[1], KEYS[2], KEYS[3], next_index, tokens, next_index - index + 1, ARGV[2],
                                ARGV[3], ARGV[4])
return {'appended', written}

-- external_tokens(meta, raw, lease, from, tokens, first, maxlen, idle_ms, ts): appends ``tokens[first..]`` to an
-- external generation's raw stream as positions ``from``, ``from + 1``, …, starts its attempt on its first token,
-- renews its producer's lease, and returns the next index and the id of the last entry written.
local function external_tokens(meta, raw, lease, from, tokens, first, maxlen, idle_ms, ts)
  if redis.call('HGET', meta, 'attempt') == '0' then
    redis.call('HSET', meta, 'attempt', 1, 'started_at', ts, 'status', 'running')
  end
  local stamp, last_id = tonumber(ts), nil
  for i = first, #tokens do
    last_id = redis.call('XADD', raw, 'MAXLEN', '~', maxlen, '*', 'type', 'token', 'attempt', 1,
                         'data', cjson.encode({content = tokens[i], ts = stamp}))
  end
  local next_index = from + #tokens - first + 1
  redis.call('HSET', meta, 'ext_next', next_index)
  HINT(raw)
  redis.call('SET', lease, 1, 'PX', idle_ms)
  return next_index, last_id
end

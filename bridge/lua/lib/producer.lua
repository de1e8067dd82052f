-- producer_check(hash, field, epoch, seq): the Durable Streams protocol's check of an idempotent producer's batch
-- against its state, 'epoch seq' in ``hash`` ``field``. Returns nil for a batch to write (new, or the first of a new
-- epoch), else what refuses it: 'duplicate' and the last seq; 'stale_epoch' and the epoch known; 'bad_epoch_seq';
-- 'gap', the seq expected and the one received.
local function producer_check(hash, field, epoch, seq)
  local state = redis.call('HGET', hash, field)
  if not state then
    if seq ~= 0 then return 'gap', '0', tostring(seq) end
    return nil
  end
  local sep = string.find(state, ' ', 1, true)
  local known_epoch, last = tonumber(string.sub(state, 1, sep - 1)), tonumber(string.sub(state, sep + 1))
  if epoch < known_epoch then return 'stale_epoch', tostring(known_epoch) end
  if epoch > known_epoch then
    if seq ~= 0 then return 'bad_epoch_seq' end
  elseif seq <= last then
    return 'duplicate', tostring(last)
  elseif seq > last + 1 then
    return 'gap', tostring(last + 1), tostring(seq)
  end
  return nil
end

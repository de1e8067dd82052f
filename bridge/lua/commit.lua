-- Commits a batch of one generation, processed by a consumer: its client events into ``:out`` (same ids as
-- in ``:raw``), the text they add to ``:text``, ``XACK :raw`` and the raw entries committed trimmed away (once
-- over 100 are kept), the ``:meta`` fields the batch changed, and on a single Redis the events' place in the
-- session stream (an entry that points at each: ``n`` the generation's place in the session, ``i`` the ``:out``
-- id, ``e`` the event unless a token; a generation stored before pointers, with no ``session_n``, gets whole
-- copies). After the terminal event the raw stream is deleted, ``:out``, ``:request`` and the session stream
-- expire after the resume window, the record (``:meta``, ``:text``, and ``:end``, the terminal event as readers
-- got it) after the retention time.
-- A session stream written to while it was to expire (another generation of it ended) is kept again.
-- A batch, or the part of one, that another consumer committed already (``:meta`` ``last_id`` is at or past it)
-- writes nothing again. The batch is fenced on continuity: it was processed from the state of the commit that
-- ``:meta`` ``last_id`` names (``base``: a consumer paused past a takeover holds an older one, and with it stale
-- ``seq`` numbers), and no entry between that commit and the batch's first one is still pending (one delivered to
-- another consumer, e.g. a stale owner's last read, would be skipped for good). Otherwise it writes and
-- acknowledges nothing and returns 'refused': the consumer reloads its state and claims every pending entry, or lets go.
-- On a single Redis, the batch that ends the generation also releases what it held (``n_end`` keys after the
-- generation's and its session's): its work entry is acknowledged and deleted, and it leaves the running sets of
-- its key and end user (0 keys: the consumer does it after the commit, as on a cluster, where they are other slots).
-- KEYS: out, raw, meta, text, cancel, lease, request, end [, session out, session generations]
--   [, work stream [, key running [, user running]]]
-- ARGV: group, maxlen, retention_ms (0: not the end), window_ms, generation_id, session_n ('' : none), n_outs,
-- n_acked, base ('' : none yet), end ('<event> <id> <data>' of the terminal event, or ''), n_end, work id,
-- then id, event, data, content of each out, then the acked ids, then meta field/value pairs.
-- Returns {'committed', the number of events written} or 'refused'.
local maxlen, retention, window, gid, sn = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local n_outs, n_acked = tonumber(ARGV[7]), tonumber(ARGV[8])
local last = redis.call('HGET', KEYS[3], 'last_id')
local first_out = 13
local first_acked = first_out + 4 * n_outs
local n_end = tonumber(ARGV[11])
local n_own = #KEYS - n_end
if (last or '') ~= ARGV[9] then return 'refused' end
local start = last and ('(' .. last) or '-'
local gap = redis.pcall('XPENDING', KEYS[2], ARGV[1], start, '(' .. ARGV[first_acked], 1)
if gap.err == nil and #gap > 0 then return 'refused' end
-- include lib/after.lua
local session = n_own > 8
-- The end of a generation gets through Redis at maxmemory: see write.lua (and PEXPIRE comes below anyway).
if retention > 0 then redis.call('PEXPIRE', KEYS[5], retention) end
local parts = {}
local written = 0
for i = first_out, first_acked - 1, 4 do
  local id, event, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if after(id, last) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, id, 'event', event, 'data', data)
    if session and sn == '' then
      local tagged = string.sub(data, 1, -2) .. ',"generation_id":"' .. gid .. '"}'
      redis.call('XADD', KEYS[9], 'MAXLEN', '~', maxlen, '*', 'event', event, 'data', tagged, 'entry_id', id)
    elseif session and event == 'token' then
      redis.call('XADD', KEYS[9], 'MAXLEN', '~', maxlen, '*', 'n', sn, 'i', id)
    elseif session then
      redis.call('XADD', KEYS[9], 'MAXLEN', '~', maxlen, '*', 'n', sn, 'i', id, 'e', event)
    end
    if event == 'restart' then
      parts = {}
      redis.call('SET', KEYS[4], '')
    elseif ARGV[i + 3] ~= '' then
      parts[#parts + 1] = ARGV[i + 3]
    end
    written = written + 1
  end
end
if session and written > 0 and redis.call('PTTL', KEYS[9]) > 0 then redis.call('PERSIST', KEYS[9]) end
if #parts > 0 then redis.call('APPEND', KEYS[4], table.concat(parts)) end
local last_acked = ARGV[first_acked + n_acked - 1]
redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, first_acked, first_acked + n_acked - 1))
if after(last_acked, last) then
  local fields = {'last_id', last_acked}
  for i = first_acked + n_acked, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(fields))
end
if retention > 0 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], window)
  for i = 3, 6 do redis.call('PEXPIRE', KEYS[i], retention) end
  redis.call('PEXPIRE', KEYS[7], window)
  if ARGV[10] ~= '' then redis.call('SET', KEYS[8], ARGV[10], 'PX', retention) end
  if session then
    redis.call('PEXPIRE', KEYS[9], window)
    redis.call('PEXPIRE', KEYS[10], retention * 2)
  end
  if n_end > 0 then
    redis.call('XACK', KEYS[n_own + 1], ARGV[1], ARGV[12])
    redis.call('XDEL', KEYS[n_own + 1], ARGV[12])
    for i = n_own + 2, #KEYS do redis.call('ZREM', KEYS[i], gid) end
  end
elseif redis.call('XLEN', KEYS[2]) > 100 then
  -- Raw entries committed go, a node's worth at a time (a trim is a write the AOF keeps: not one per commit).
  local ms, seq = string.match(last_acked, '(%d+)-(%d+)')
  redis.call('XTRIM', KEYS[2], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
end
if written > 0 then HINT_BATCHED(KEYS[1]) end
if session and written > 0 then HINT_BATCHED(KEYS[9]) end
return {'committed', written}

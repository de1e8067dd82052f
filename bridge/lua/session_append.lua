-- Adds a batch of one generation's committed client events to its session stream, once: an event at or before the
-- last one added (by its ``:out`` id) is skipped, so a batch added again (after a takeover) adds nothing twice.
-- Used where it cannot share a transaction with the generation's commit (Redis Cluster: the session is another
-- slot), after the commit. The entries point at the events, as COMMIT's do (whole copies for a generation stored
-- before pointers, with no ``session_n``).
-- KEYS: session out, session copied (hash: generation -> last :out id added)
-- ARGV: generation_id, maxlen, ttl_ms, session_n, then event, data (the whole copy; '' with a session_n), :out id
-- of each event.   Returns {'appended', the number of events appended}.
local sn = ARGV[4]
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last and not string.match(last, '^%d+%-%d+$') then last = nil end
-- include lib/after.lua
local written = 0
for i = 5, #ARGV, 3 do
  local event, id = ARGV[i], ARGV[i + 2]
  if after(id, last) then
    if sn == '' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', event, 'data', ARGV[i + 1], 'entry_id', id)
    elseif event == 'token' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', sn, 'i', id)
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', sn, 'i', id, 'e', event)
    end
    last = id
    written = written + 1
  end
end
if last then redis.call('HSET', KEYS[2], ARGV[1], last) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if written > 0 and redis.call('PTTL', KEYS[1]) > 0 then redis.call('PERSIST', KEYS[1]) end
if written > 0 then HINT(KEYS[1]) end
return {'appended', written}

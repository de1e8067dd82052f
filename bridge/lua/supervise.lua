-- What the supervisor should do about a generation whose attempt may be dead.
-- KEYS: meta, lease   ARGV: now_ms, max_attempts, queue_timeout_ms, resend_ms, max_resends, lost_before_ms
-- Returns 'nothing', 'requeue' (enqueue a new attempt: marked), 'exhausted' (no attempt left), 'queue_timeout' (not
-- started in time), 'producer_silent' (an external producer went quiet) or 'resend' (send the waiting attempt's
-- task again: marked). Attempts are counted
-- when they start (claim), not when enqueued: a new attempt that waits in a busy queue is given QUEUE_TIMEOUT
-- to start. A task message can be lost between the queue and the claim (a worker killed, or cut off from
-- Redis, after taking it): an attempt still waiting ``resend_ms`` after its task was last sent gets it sent
-- again, at most ``max_resends`` times per attempt, the wait doubling each time. A copy too many is harmless:
-- CLAIM_ATTEMPT refuses it once an attempt runs. ``lost_before_ms`` (0: none) is when a worker that has since
-- died may last have taken a task: a task sent before then is sent again now, not after ``resend_ms``.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 'nothing' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'nothing' end
local now = tonumber(ARGV[1])
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local external = redis.call('HGET', KEYS[1], 'model') == 'external'
if external and attempt > 0 then return 'producer_silent' end
local requeued_attempt = tonumber(redis.call('HGET', KEYS[1], 'requeued_attempt') or '-1')
local waiting_since
if attempt == 0 and requeued_attempt < 0 then
  waiting_since = tonumber(redis.call('HGET', KEYS[1], 'created_at') or '0') * 1000
elseif requeued_attempt == attempt then
  waiting_since = tonumber(redis.call('HGET', KEYS[1], 'requeued_at') or '0')
end
if waiting_since then
  if now - waiting_since > tonumber(ARGV[3]) then return 'queue_timeout' end
  local resend_ms = tonumber(ARGV[4])
  local resends = tonumber(redis.call('HGET', KEYS[1], 'resends') or '0')
  -- An external generation has no task: it waits for its producer's first token.
  if external or resend_ms <= 0 or resends >= tonumber(ARGV[5]) then return 'nothing' end
  local sent_at = math.max(waiting_since, tonumber(redis.call('HGET', KEYS[1], 'sent_at') or '0'))
  local maybe_lost = sent_at <= tonumber(ARGV[6] or '0')
  if not maybe_lost and now - sent_at <= resend_ms * 2 ^ resends then return 'nothing' end
  redis.call('HSET', KEYS[1], 'sent_at', ARGV[1], 'resends', resends + 1)
  return 'resend'
end
if attempt >= tonumber(ARGV[2]) then return 'exhausted' end
-- The new attempt's task gets its own re-sends.
redis.call('HSET', KEYS[1], 'requeued_attempt', attempt, 'requeued_at', ARGV[1], 'resends', 0)
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
return 'requeue'

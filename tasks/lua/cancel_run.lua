-- cancel_run: make a run cancelled unless it is final.
--
-- KEYS[1]  the run's record (hash)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  reason: why (for the ``cancelled`` event)
-- Reads: status, tenant, the tenant's waiting set. Writes: cancel_requested_at, and the
-- final state through finalize (_common.lua).
-- Returns {outcome, run to start now, finished batch, final status, run whose end no message
-- will record}; outcome is 'cancelled', 'final:<status>' or 'missing'. A run waiting for its
-- tenant's slot has no message in any queue, so the caller publishes one that finds it
-- cancelled. So has a run waiting for its turn on its thread, or for a person.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', '', '', '', ''} end
if is_final(status) then return {'final:' .. status, '', '', '', ''} end
redis.call('HSET', KEYS[1], 'cancel_requested_at', ctx.now)
local parked = ''
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant and redis.call('ZSCORE', ctx.prefix .. ':tenant:' .. tenant .. ':waiting', ctx.run_id)
then
  parked = ctx.run_id
end
if status == 'waiting' then parked = ctx.run_id end  -- waiting for a person: no message
local t = thread_of(KEYS[1])
if t and status == 'queued' and redis.call('ZSCORE', t .. ':queue', ctx.run_id)
    and redis.call('ZRANGE', t .. ':queue', 0, 0)[1] ~= ctx.run_id then
  parked = ctx.run_id  -- waiting for its turn on its thread
end
local follow = finalize(KEYS[1], ctx.run_id, 'cancelled', {reason = ARGV[2]})
return {'cancelled', follow[1], follow[2], follow[3], parked}

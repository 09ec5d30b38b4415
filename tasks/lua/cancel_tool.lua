-- cancel_tool: a standalone tool call not yet started gets a cancelled result (and counts on
-- its batch); one with a result, or running, keeps it.
--
-- KEYS[1]  the tool call's record (hash; its lease is KEYS[1] .. ':lease')
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  reason: the cancelled result's message
-- Returns {'cancelled', finished batch or ''}, {status, ''} (it has a result or runs) or
-- {'missing', ''}.

if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', ''} end
if redis.call('HEXISTS', KEYS[1], 'result') == 1 or redis.call('EXISTS', KEYS[1] .. ':lease') == 1
then
  return {redis.call('HGET', KEYS[1], 'status'), ''}
end
local id = redis.call('HGET', KEYS[1], 'id')
local result = cjson.encode({id = id, name = redis.call('HGET', KEYS[1], 'name'), ok = false,
                             error = {code = 'cancelled', message = ARGV[2]}})
redis.call('HSET', KEYS[1], 'result', result, 'status', 'cancelled', 'finished_at', ctx.now)
return {'cancelled', count_in_batch(redis.call('HGET', KEYS[1], 'batch_id'), 'cancelled')}

-- reserve_spend: reserve an LLM call's estimate against its tenant's daily budget, fleet-wide: the check and
-- the hold in one step, so concurrent calls cannot all pass on the same remainder.
--
-- KEYS[1] the tenant's day (agentfleet.tasks.keys.tenant_spend), KEYS[2] its reservations
--   (tenant_spend_held). ARGV[1] {now, id (the reservation), tokens, cost (the estimate),
--   lapses (when an unsettled reservation stops counting: its worker died), ttl, limit_tokens,
--   limit_cost (0: none)}.
-- Reservations that lapsed are released first. Then, if what the day used and holds plus the
--   estimate passes a limit, nothing is held.
-- Returns {'ok'}, or {'tokens'|'cost', used and held, limit} naming the budget that refused.

local day, held = KEYS[1], KEYS[2]
local a = cjson.decode(ARGV[1])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', held, '-inf', a.now)) do
  local hold = redis.call('HGET', day, 'held:' .. id)
  if hold then
    local tokens, cost = string.match(hold, '^(%S+) (%S+)$')
    redis.call('HINCRBY', day, 'held_tokens', -tonumber(tokens))
    redis.call('HINCRBYFLOAT', day, 'held_cost', -tonumber(cost))
    redis.call('HDEL', day, 'held:' .. id)
  end
  redis.call('ZREM', held, id)
end
local v = redis.call('HMGET', day, 'tokens', 'held_tokens', 'cost', 'held_cost')
local tokens = tonumber(v[1] or '0') + tonumber(v[2] or '0')
local cost = tonumber(v[3] or '0') + tonumber(v[4] or '0')
if a.limit_tokens > 0 and tokens + a.tokens > a.limit_tokens then
  return {'tokens', tostring(tokens), tostring(a.limit_tokens)}
end
if a.limit_cost > 0 and cost + a.cost > a.limit_cost then
  return {'cost', tostring(cost), tostring(a.limit_cost)}
end
redis.call('HINCRBY', day, 'held_tokens', a.tokens)
redis.call('HINCRBYFLOAT', day, 'held_cost', tostring(a.cost))
redis.call('HSET', day, 'held:' .. a.id, a.tokens .. ' ' .. tostring(a.cost))
redis.call('ZADD', held, a.lapses, a.id)
redis.call('EXPIRE', day, a.ttl)
redis.call('EXPIRE', held, a.ttl)
return {'ok'}

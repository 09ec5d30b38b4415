-- settle_spend: settle a reserved LLM call: release what its reservation held and count what it used.
--
-- KEYS[1] the tenant's day of the reservation, KEYS[2] its reservations. ARGV[1] {id, spend}:
--   spend as _spend.lua's spend(s) takes it, or null for a call that used nothing (it failed).
-- A reservation that lapsed meanwhile was released already: only the usage is counted.
-- Returns 1.

local day, held = KEYS[1], KEYS[2]
local a = cjson.decode(ARGV[1])
local hold = redis.call('HGET', day, 'held:' .. a.id)
if hold then
  local tokens, cost = string.match(hold, '^(%S+) (%S+)$')
  redis.call('HINCRBY', day, 'held_tokens', -tonumber(tokens))
  redis.call('HINCRBYFLOAT', day, 'held_cost', -tonumber(cost))
  redis.call('HDEL', day, 'held:' .. a.id)
end
redis.call('ZREM', held, a.id)
if a.spend ~= cjson.null then spend(a.spend) end
return 1

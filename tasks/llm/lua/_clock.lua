-- Shared by the provider-guard scripts (agentfleet.tasks.llm._guard puts it first): every
-- script reads the time from Redis, one clock for the whole fleet, to the microsecond.
--
-- Defines: clock (that time as an exact string, stored and returned), now (as a number).

local t = redis.call('TIME')
local clock = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now = tonumber(clock)

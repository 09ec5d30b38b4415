-- hold: hold every call to the provider for a Retry-After, keeping the later of two ends.
-- Loaded after _clock.lua.
--
-- KEYS[1]  the hold (string: a time, expires with it)
-- ARGV[1]  seconds to hold from now
-- Returns 1.

local until_ts = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ts > current then
  redis.call('SET', KEYS[1], string.format('%.6f', until_ts),
             'PX', math.ceil(tonumber(ARGV[1]) * 1000))
end
return 1

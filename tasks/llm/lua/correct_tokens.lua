-- correct_tokens: move the tokens-per-minute limiter by the difference between a call's actual
-- and estimated tokens. Loaded after _clock.lua.
--
-- KEYS[1]  the tokens-per-minute limiter's theoretical arrival time (string, expires)
-- ARGV[1]  tpm
-- ARGV[2]  token delta (actual - estimated)
-- Returns 0 no limiter state, 1 corrected (deleted when it falls before now).

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat == 0 then return 0 end
local new_tat = tat + (60.0 / tonumber(ARGV[1])) * tonumber(ARGV[2])
if new_tat <= now then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return 1

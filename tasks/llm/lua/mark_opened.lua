-- mark_opened: the breaker's opening time on Redis's clock: moves it to now, unless it holds a
-- later time. Loaded after _clock.lua.
--
-- KEYS[1]  pybreaker's opened_at (string: a time)
-- Returns the time now (clock).

if now > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], clock) end
return clock

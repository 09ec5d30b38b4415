-- announce: announce a breaker state change once for the fleet. The first process to report
-- it stores the state (an opening with its time, so that the fleet sees the breaker open from
-- the instant its reset timeout counts from) and appends the event. Loaded after _clock.lua.
--
-- KEYS[1]  the marker of the new state (string, expires)
-- KEYS[2]  KEYS[3]  the markers of the two other states
-- KEYS[4]  pybreaker's state
-- KEYS[5]  pybreaker's opened_at
-- KEYS[6]  the providers' event stream
-- ARGV[1]  the new state
-- ARGV[2]  the old state
-- ARGV[3]  the provider's name
-- ARGV[4]  the announcing process's pid
-- Returns the time (clock), or '' when another process announced it already.

if not redis.call('SET', KEYS[1], ARGV[4], 'NX', 'EX', 86400) then return '' end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SET', KEYS[4], ARGV[1])
if ARGV[1] == 'open' and now > tonumber(redis.call('GET', KEYS[5]) or '0') then
  redis.call('SET', KEYS[5], clock)
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', 1000, '*', 'provider', ARGV[3],
           'from', ARGV[2], 'to', ARGV[1], 'at', clock)
return clock

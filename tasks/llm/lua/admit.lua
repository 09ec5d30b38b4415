-- admit: may a call go to this provider now? Reads the breaker, the Retry-After hold and the
-- rate limits in one step, and spends the limits of a call it admits. Loaded after _clock.lua.
--
-- KEYS[1]  pybreaker's state (string: closed | open | half-open)
-- KEYS[2]  pybreaker's opened_at (string: a time)
-- KEYS[3]  pybreaker's success_counter
-- KEYS[4]  half-open probes in flight (string, expires)
-- KEYS[5]  the Retry-After hold (string: a time)
-- KEYS[6]  the requests-per-minute limiter's theoretical arrival time
-- KEYS[7]  the tokens-per-minute limiter's theoretical arrival time
-- KEYS[8]  the providers' event stream
-- KEYS[9]  pybreaker's fail_counter
-- ARGV[1]  reset_timeout, s
-- ARGV[2]  max_probes: trial calls half-open allows across the fleet
-- ARGV[3]  probe_ttl_ms: when a probe that never reports back frees its slot
-- ARGV[4]  rpm (0: no limit)
-- ARGV[5]  tpm (0: no limit)
-- ARGV[6]  burst_s: the limiters' burst, s
-- ARGV[7]  cost_tokens: the call's estimated tokens
-- ARGV[8]  the provider's name (for the event)
-- ARGV[9]  announce_prefix: the prefix of the state-announced markers
-- Writes: open -> half-open once its reset timeout has passed (state, success_counter, the
-- markers, an event); probes; the limiters of an admitted call.
-- Returns {outcome, wait_seconds, probe, half_opened, limits, clean, clock}; outcome is
-- ok | hold | open | probing | limited. ``limits`` names the limits that said no ("rpm",
-- "tpm" or "rpm,tpm") for the denial metrics; ``clean`` is '1' when an ok call finds the
-- breaker closed with no failure counted; ``clock`` is when the call was admitted.

local half_opened = '0'
local function answer(outcome, wait, probe, limits, clean)
  return {outcome, tostring(wait), probe, half_opened, limits, clean, clock}
end
local hold = tonumber(redis.call('GET', KEYS[5]) or '0')
if hold > now then return answer('hold', hold - now, '0', '', '0') end
local state = redis.call('GET', KEYS[1]) or 'closed'
local probe = '0'
if state == 'open' then
  local left = tonumber(redis.call('GET', KEYS[2]) or '0') + tonumber(ARGV[1]) - now
  if left > 0 then return answer('open', left, '0', '', '0') end
  -- Same transition as pybreaker's half_open(): its instances notice it on next use.
  -- It happens here exactly once, so it is announced here, with the marker that keeps
  -- the pybreaker listeners from announcing it again.
  redis.call('SET', KEYS[1], 'half-open')
  redis.call('SET', KEYS[3], 0)
  redis.call('SET', ARGV[9] .. 'half-open', 'lua', 'EX', 86400)
  redis.call('DEL', ARGV[9] .. 'open', ARGV[9] .. 'closed')
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', 1000, '*', 'provider', ARGV[8],
             'from', 'open', 'to', 'half-open', 'at', clock)
  state = 'half-open'
  half_opened = '1'
end
if state == 'half-open' then
  local n = redis.call('INCR', KEYS[4])
  if n == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
  if n > tonumber(ARGV[2]) then
    local ttl = redis.call('PTTL', KEYS[4])
    if ttl < 100 then ttl = 100 end
    return answer('probing', ttl / 1000, '0', '', '0')
  end
  probe = '1'
end
local burst = tonumber(ARGV[6])
local function gcra(key, per_minute, cost)
  local interval = 60.0 / per_minute
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  -- A call bigger than the burst may still go once the bucket is full.
  local tolerance = math.max(burst, interval * cost)
  local allow_at = new_tat - tolerance
  if allow_at > now then return allow_at - now, nil end
  return 0, new_tat
end
local wait, rpm_tat, tpm_tat, w, by = 0, nil, nil, 0, {}
if tonumber(ARGV[4]) > 0 then
  w, rpm_tat = gcra(KEYS[6], tonumber(ARGV[4]), 1)
  wait = math.max(wait, w)
  if w > 0 then by[#by + 1] = 'rpm' end
end
if tonumber(ARGV[5]) > 0 then
  w, tpm_tat = gcra(KEYS[7], tonumber(ARGV[5]), tonumber(ARGV[7]))
  wait = math.max(wait, w)
  if w > 0 then by[#by + 1] = 'tpm' end
end
if wait > 0 then
  if probe == '1' then redis.call('DECR', KEYS[4]) end
  return answer('limited', wait, '0', table.concat(by, ','), '0')
end
if rpm_tat then
  redis.call('SET', KEYS[6], tostring(rpm_tat), 'PX', math.ceil((rpm_tat - now) * 1000) + 1000)
end
if tpm_tat then
  redis.call('SET', KEYS[7], tostring(tpm_tat), 'PX', math.ceil((tpm_tat - now) * 1000) + 1000)
end
local clean = '0'
if state == 'closed' and tonumber(redis.call('GET', KEYS[9]) or '0') == 0 then clean = '1' end
return answer('ok', 0, probe, '', clean)

-- begin_tool: take a tool call to run it (its lease), unless its result is stored. Loaded after
-- _common.lua and _stale.lua.
--
-- KEYS[1]  the tool call's record (hash)
-- KEYS[2]  the tool call's lease (string)
-- KEYS[3]  its run's record (hash; an unused key for a standalone call)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  token: the lease token
-- ARGV[3]  lease_ms: how long the lease holds
-- ARGV[4]  the tool's name
-- ARGV[5]  its arguments, JSON
-- ARGV[6]  due: the run's next due time while the call runs
-- ARGV[7]  step: the run's step that asked for the call
-- ARGV[8]  the call's ID
-- ARGV[9]  max_deliveries: deliveries that began the call before it is poisoned
-- ARGV[10] the acceptance token ('' for calls the API did not create)
-- ARGV[11] the generation of the run's answer that asked for the call ('' for none)
-- Reads: accept, pending, result, gen, tenant; the run's status, gen:<step> and tenant.
-- Writes: the lease; id, name, arguments, created_at, run_id (if unset); attempts; status
-- running, started_at; a stale result of another generation is dropped (one less in the
-- run's tools_done); the run's due time and event tool_call_started.
-- Returns {'ok', tenant} (the tenant the call belongs to; '' if unknown: its run is gone);
-- {'done', result}; {'cancelled'} (its run was cancelled); {'stale'} (the run's step holds
-- another generation); {'refused'} (the API never accepted this message's call); {'pending',
-- PTTL ms}; {'busy', lease PTTL ms}; {'poisoned', deliveries} (begun more than
-- max_deliveries times, each losing its worker: the caller holds the lease, to store the
-- failure).

if ARGV[10] ~= '' then
  if redis.call('HGET', KEYS[1], 'accept') ~= ARGV[10] then return {'refused'} end
  if redis.call('HEXISTS', KEYS[1], 'pending') == 1 then
    return {'pending', tostring(redis.call('PTTL', KEYS[1]))}
  end
end
if stale(KEYS[3], ARGV[7], ARGV[11]) then return {'stale'} end
local stored = redis.call('HMGET', KEYS[1], 'result', 'gen')
local replace = stored[1] and ARGV[11] ~= '' and stored[2] and stored[2] ~= ARGV[11]
if stored[1] and not replace then return {'done', stored[1]} end
if ctx.run_id ~= '' and redis.call('HGET', KEYS[3], 'status') == 'cancelled' then
  return {'cancelled'}
end
-- Our own lease: this claim ran before and its reply was lost (Redis went away as it
-- answered, and the caller sent it again): answer as it did, counting nothing twice.
local resent = false
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then
    return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
  end
  resent = true
end
if resent then
  local n = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
  if n > tonumber(ARGV[9]) then return {'poisoned', tostring(n)} end
else
  if replace then
    -- A new call under the same ID: its deliveries count from zero.
    redis.call('HDEL', KEYS[1], 'result', 'finished_at', 'attempts')
    redis.call('HSET', KEYS[1], 'name', ARGV[4], 'arguments', ARGV[5])
    if ctx.run_id ~= '' then redis.call('HINCRBY', KEYS[3], 'tools_done', -1) end
  end
  redis.call('HSETNX', KEYS[1], 'created_at', ctx.now)
  redis.call('HSETNX', KEYS[1], 'id', ARGV[8])
  redis.call('HSETNX', KEYS[1], 'name', ARGV[4])
  redis.call('HSETNX', KEYS[1], 'arguments', ARGV[5])
  if ctx.run_id ~= '' then redis.call('HSETNX', KEYS[1], 'run_id', ctx.run_id) end
  local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  if n > tonumber(ARGV[9]) then return {'poisoned', tostring(n)} end
  if ctx.run_id ~= '' then
    redis.call('ZADD', ctx.prefix .. ':runs:active', 'XX', ARGV[6], ctx.run_id)
    emit(KEYS[3], 'tool_call_started', {id = ARGV[8], name = ARGV[4], step = tonumber(ARGV[7])})
  end
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ctx.now)
end
-- Its tenant scopes its tool's cache. Read here, where both records are at hand, rather than
-- carried in the message: no payload changes, and messages sent before a tool was cached, or
-- by send_task callers, need none. The API writes it on a standalone call's record (as
-- GET /v1/tool-calls/{id} reads it); a run's call belongs to its run's tenant.
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if not tenant and ctx.run_id ~= '' then tenant = redis.call('HGET', KEYS[3], 'tenant') end
return {'ok', tenant or ''}

-- begin_step: claim a run's step for one delivery (the lease), or say why not.
--
-- KEYS[1]  the run's record (hash)
-- KEYS[2]  the run's lease (string)
-- KEYS[3]  the run's messages (list)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  token: this claim's lease token (and the generation of the answer it applies)
-- ARGV[3]  step: the step number
-- ARGV[4]  lease_ms: how long the lease holds
-- ARGV[5]  max_deliveries: deliveries of one step before it is poisoned
-- ARGV[6]  due: the run's next due time while the step runs
-- ARGV[7]  worker: the claiming worker's name (for the ``started`` event)
-- Reads: pending, status, dispatched_step, applied_step, tenant, cap, needs_slot, max_steps,
-- the tenant's slots, the thread's queue and history. Writes: the lease, deliveries:<step>,
-- status queued -> running (event ``started``), needs_slot (dropped once a slot is taken),
-- the tenant's inflight/waiting sets, <p>:runs:active, event llm_call_started; on a thread,
-- once: the history into the messages, and ``history``.
-- Returns {'ok', record (flat HGETALL), messages}; {'missing'}; {'pending', PTTL ms};
-- {'terminal', status}; {'waiting'} (it waits for a person); {'done'} (already dispatched);
-- {'rolled_back'} (the answer of the step before is gone; the run is due now);
-- {'throttled'} (waits for a tenant slot, or for its turn on its thread);
-- {'busy', lease PTTL ms}; {'poisoned', deliveries}.

if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HEXISTS', KEYS[1], 'pending') == 1 then
  return {'pending', tostring(redis.call('PTTL', KEYS[1]))}
end
local status = redis.call('HGET', KEYS[1], 'status')
if is_final(status) then
  redis.call('ZREM', ctx.prefix .. ':runs:active', ctx.run_id)
  return {'terminal', status}
end
-- Waiting for a person: the decision that ends the wait publishes the step again.
if status == 'waiting' then return {'waiting'} end
local step = tonumber(ARGV[3])
if tonumber(redis.call('HGET', KEYS[1], 'dispatched_step') or '0') >= step then
  return {'done'}
end
local applied = tonumber(redis.call('HGET', KEYS[1], 'applied_step') or '0')
if applied < step - 1 then
  -- The answer of the step that published this one is gone.
  redis.call('ZADD', ctx.prefix .. ':runs:active', ctx.now, ctx.run_id)
  return {'rolled_back'}
end
if status == 'queued' then
  -- A run on a thread runs when it is first of the thread's queue (accepted before the
  -- others unfinished); until then it waits, and the run before it starts it when it ends.
  -- Taking its turn, it gets the thread's history in front of its input, once.
  local t = thread_of(KEYS[1])
  if t then
    local first = redis.call('ZRANGE', t .. ':queue', 0, 0)[1]
    if first and first ~= ctx.run_id and redis.call('ZSCORE', t .. ':queue', ctx.run_id) then
      redis.call('ZADD', ctx.prefix .. ':runs:active', ARGV[6], ctx.run_id)
      return {'throttled'}
    end
    if not redis.call('HGET', KEYS[1], 'history') then
      local history = redis.call('LRANGE', t .. ':messages', 0, -1)
      if #history > 0 then
        local head = tonumber(redis.call('HGET', KEYS[1], 'head') or '0')
        local own = redis.call('LRANGE', KEYS[3], 0, -1)
        redis.call('DEL', KEYS[3])
        for i = 1, head do redis.call('RPUSH', KEYS[3], own[i]) end
        for _, m in ipairs(history) do redis.call('RPUSH', KEYS[3], m) end
        for i = head + 1, #own do redis.call('RPUSH', KEYS[3], own[i]) end
        redis.call('EXPIRE', KEYS[3], ctx.ttl)
      end
      redis.call('HSET', KEYS[1], 'history', #history)
    end
  end
end
-- The tenant's cap on runs in flight: over it, the run waits its turn in a queue of the
-- tenant's own, and the run that frees a slot starts the first one waiting. A run takes a
-- slot when it starts, and again when it goes on after waiting for a person (needs_slot).
local resumed = redis.call('HEXISTS', KEYS[1], 'needs_slot') == 1
if status == 'queued' or resumed then
  local tenant = redis.call('HGET', KEYS[1], 'tenant')
  local cap = tonumber(redis.call('HGET', KEYS[1], 'cap') or '0')
  if tenant and cap > 0 then
    local t = ctx.prefix .. ':tenant:' .. tenant
    if redis.call('SISMEMBER', t .. ':inflight', ctx.run_id) == 0 then
      if redis.call('SCARD', t .. ':inflight') >= cap then
        local score = redis.call('HGET', KEYS[1], 'created_at')
        redis.call('ZADD', t .. ':waiting', 'NX', score, ctx.run_id)
        redis.call('ZADD', ctx.prefix .. ':runs:active', ARGV[6], ctx.run_id)
        return {'throttled'}
      end
      redis.call('SADD', t .. ':inflight', ctx.run_id)
    end
  end
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[4]) then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then
    return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
  end
  -- Our own lease: this claim ran before and its reply was lost (Redis went away as it
  -- answered, and the caller sent it again): answer as it did, counting nothing twice.
  return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1)}
end
local n = redis.call('HINCRBY', KEYS[1], 'deliveries:' .. ARGV[3], 1)
if n > tonumber(ARGV[5]) then return {'poisoned', tostring(n)} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ctx.now)
  emit(KEYS[1], 'started', {worker = ARGV[7]})
end
if resumed then redis.call('HDEL', KEYS[1], 'needs_slot') end
redis.call('ZADD', ctx.prefix .. ':runs:active', ARGV[6], ctx.run_id)
if applied < step and step <= tonumber(redis.call('HGET', KEYS[1], 'max_steps') or step) then
  emit(KEYS[1], 'llm_call_started', {step = step})
end
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1)}

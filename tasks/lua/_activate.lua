-- Shared by create_run.lua and accept.lua (loaded after _common.lua).
--
-- activate(run_key, messages_key, due): a run that is accepted is kept for the record
-- lifetime, put on the watchdog's worklist (<p>:runs:active, due at ``due``), counted as
-- enqueued in the run metrics and announced with a ``queued`` event; a run on a thread joins
-- the thread's queue, in the order of acceptance; it joins its tenant's run indexes (all,
-- agent, thread, each metadata pair). Returns false, having changed nothing, for
-- a run whose thread_policy is ``reject`` while its thread has an unfinished run; else true.

local function activate(run_key, messages_key, due)
  local t = thread_of(run_key)
  if t then
    if redis.call('HGET', run_key, 'thread_policy') == 'reject'
        and redis.call('ZCARD', t .. ':queue') > 0 then
      return false
    end
    local tenant, id, ttl = unpack(redis.call('HMGET', run_key, 'tenant', 'thread_id',
      'thread_ttl'))
    redis.call('ZADD', t .. ':queue', redis.call('HINCRBY', t, 'seq', 1), ctx.run_id)
    redis.call('RPUSH', t .. ':runs', ctx.run_id)
    redis.call('LTRIM', t .. ':runs', -1000, -1)
    redis.call('HSETNX', t, 'created_at', ctx.now)
    redis.call('HSET', t, 'tenant', tenant, 'id', id, 'updated_at', ctx.now)
    keep_thread(t, tonumber(ttl))
  end
  redis.call('EXPIRE', run_key, ctx.ttl)
  redis.call('EXPIRE', messages_key, ctx.ttl)
  local tenant, agent, thread, metadata = unpack(redis.call('HMGET', run_key, 'tenant', 'agent',
    'thread_id', 'metadata'))
  if tenant then
    index_run(run_key, tenant)
    if agent then index_run(run_key, tenant, 'agent', agent) end
    if thread then index_run(run_key, tenant, 'thread', thread) end
    for k, v in pairs(cjson.decode(metadata or '{}')) do
      index_run(run_key, tenant, 'meta', k .. '=' .. v)
    end
  end
  redis.call('ZADD', ctx.prefix .. ':runs:active', due, ctx.run_id)
  redis.call('HINCRBY', ctx.prefix .. METRIC.runs, 'enqueued', 1)
  local model, max_steps = unpack(redis.call('HMGET', run_key, 'model', 'max_steps'))
  emit(run_key, 'queued', {model = model, max_steps = tonumber(max_steps)})
  return true
end

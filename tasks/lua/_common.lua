-- Shared by the run-store scripts (agentfleet.tasks.scripts puts it first): the context
-- argument and the helpers every transition uses.
--
-- Defines: ctx (ARGV[1] decoded: now, prefix, ttl, maxlen, run_id); RUN_BUCKETS ({upper
-- bound, field} per run-latency bucket) and METRIC (the metric keys after the prefix), whose
-- placeholders the loader fills in from agentfleet.tasks.metrics.RUN_BUCKETS and
-- agentfleet.tasks.keys.MetricKeys; and the functions
--   emit(run_key, kind, data)         append an event to <run>:events (bounded, expires)
--   count_in_batch(batch_id, status)  count a final item on <p>:batch:<id>; returns the batch
--                                     ID if it was the last one, else ''
--   is_final(status)                  succeeded, failed or cancelled
--   rolled_back(run_key, lease_key, token, step)  give the step back and make the run due now
--   count_finished(run_key, status)   the run metrics of a run becoming final (also per agent)
--   count_agent_usage(run_key, prompt, completion, cached, cost)  a step's usage on its run's
--                                     agent ('' for a run of none) in the agent metrics
--   thread_of(run_key)                the base key of the run's thread, or nil
--   keep_thread(t, ttl)               extend the lifetime of thread ``t``'s keys
--   index_run(run_key, tenant, kind, value)  add the run to one of its tenant's run indexes
--   forget_call(key)                  a tool call's record without its arguments, its result
--                                     cut to ok and the error's code
--   free_slot(run_key, run_id)        take the run out of its tenant's runs in flight (a run
--                                     of a tenant without a cap has no slot); returns the run
--                                     of the tenant's queue that now has the slot, or ''
--   finalize(run_key, run_id, status, data)  make the run final, free its tenant slot and its
--                                     thread (adding its turn if it succeeded), delete the
--                                     transcript of a run flagged no_transcript; returns
--                                     {runs to start now, finished batch, final status}
-- Keys it derives from ctx.prefix: <p>:runs:active, <p>:tenant:<t>:inflight|waiting,
-- <p>:tenant:<t>:runs[:<kind>:<value>] (agentfleet.tasks.keys.tenant_runs),
-- <p>:thread:<t>:<id>[:messages|:turns|:queue|:runs], <p>:batch:<id>, the metric hashes, the
-- run's tool calls <p>:tool:<run>-<step>-<index> (agentfleet.tasks.keys.tool_call_id).

local ctx = cjson.decode(ARGV[1])
local RUN_BUCKETS = @RUN_BUCKETS@
local METRIC = @METRIC_KEYS@
local function emit(run_key, kind, data)
  local ev = run_key .. ':events'
  redis.call('XADD', ev, 'MAXLEN', '~', ctx.maxlen, '*', 'type', kind, 'data', cjson.encode(data))
  redis.call('EXPIRE', ev, ctx.ttl)
end
-- Count an item of a batch as final; returns the batch ID if it was the last one, else ''.
local function count_in_batch(batch_id, status)
  if not batch_id then return '' end
  local b = ctx.prefix .. ':batch:' .. batch_id
  redis.call('HINCRBY', b, 'n_' .. status, 1)
  local done = redis.call('HINCRBY', b, 'completed', 1)
  if done == tonumber(redis.call('HGET', b, 'total') or '-1') then return batch_id end
  return ''
end
local function is_final(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled'
end
-- A step found that what it builds on was rolled back: give the step back (not a crash, so
-- not a delivery) and make the run due now, for the watchdog.
local function rolled_back(run_key, lease_key, token, step)
  if redis.call('GET', lease_key) == token then redis.call('DEL', lease_key) end
  redis.call('HINCRBY', run_key, 'deliveries:' .. step, -1)
  redis.call('ZADD', ctx.prefix .. ':runs:active', ctx.now, ctx.run_id)
end
-- The run metrics: one more run with this final status, and its created -> finished time.
-- Called by finalize, which each caller runs only on a run that is not final yet: once a run.
-- The agent labels are the run's agent field: a registered name, or '' (intake refuses others).
local function count_finished(run_key, status)
  redis.call('HINCRBY', ctx.prefix .. METRIC.runs, status, 1)
  local agent = redis.call('HGET', run_key, 'agent') or ''
  redis.call('HINCRBY', ctx.prefix .. METRIC.agent_runs, cjson.encode({agent, status}), 1)
  local created = tonumber(redis.call('HGET', run_key, 'created_at') or ctx.now)
  local seconds = math.max(ctx.now - created, 0)
  local field = '+Inf'
  for _, bucket in ipairs(RUN_BUCKETS) do
    if seconds <= bucket[1] then field = bucket[2] break end
  end
  local hist = ctx.prefix .. METRIC.run_seconds
  redis.call('HINCRBY', hist, field, 1)
  redis.call('HINCRBYFLOAT', hist, 'sum', tostring(seconds))
end
local function count_agent_usage(run_key, prompt, completion, cached, cost)
  local agent = redis.call('HGET', run_key, 'agent') or ''
  local m = ctx.prefix .. METRIC.agent_usage
  redis.call('HINCRBY', m, cjson.encode({agent, 'prompt'}), prompt)
  redis.call('HINCRBY', m, cjson.encode({agent, 'completion'}), completion)
  if cached > 0 then redis.call('HINCRBY', m, cjson.encode({agent, 'cached'}), cached) end
  if cost > 0 then redis.call('HINCRBYFLOAT', m, cjson.encode({agent, 'cost'}), tostring(cost)) end
end
-- The base key of the run's thread (<p>:thread:<tenant>:<id>), or nil for a run on none.
local function thread_of(run_key)
  local tenant, id = unpack(redis.call('HMGET', run_key, 'tenant', 'thread_id'))
  if not id then return nil end
  return ctx.prefix .. ':thread:' .. tenant .. ':' .. id
end
-- Keep every key of thread ``t`` for ``ttl`` more seconds.
local function keep_thread(t, ttl)
  for _, k in ipairs({t, t .. ':messages', t .. ':turns', t .. ':queue', t .. ':runs'}) do
    redis.call('EXPIRE', k, ttl)
  end
end
-- Add the turn of a run that succeeded on thread ``t`` to its history: the messages after
-- the history it started with (all of them, or by its thread_history policy only its input
-- and its final answer), dropping the oldest turns, whole, beyond thread_max_turns.
local function append_turn(run_key, t, spliced)
  local head, policy, max_turns, ttl = unpack(redis.call('HMGET', run_key, 'head',
    'thread_history', 'thread_max_turns', 'thread_ttl'))
  local own = redis.call('LRANGE', run_key .. ':messages', tonumber(head) + tonumber(spliced), -1)
  local turn = own
  if policy ~= 'full' then turn = {own[1], own[#own]} end
  for _, m in ipairs(turn) do redis.call('RPUSH', t .. ':messages', m) end
  redis.call('RPUSH', t .. ':turns', #turn)
  while redis.call('LLEN', t .. ':turns') > tonumber(max_turns) do
    redis.call('LTRIM', t .. ':messages', tonumber(redis.call('LPOP', t .. ':turns')), -1)
  end
  redis.call('HINCRBY', t, 'turns', 1)
  redis.call('HSET', t, 'updated_at', ctx.now)
  keep_thread(t, tonumber(ttl))
end
-- A final run leaves its thread's queue (its turn added if it succeeded); if it held the
-- thread, the next run of the queue takes it. Returns that run's ID, or ''.
local function release_thread(run_key, run_id, t, status)
  local first = redis.call('ZRANGE', t .. ':queue', 0, 0)[1]
  redis.call('ZREM', t .. ':queue', run_id)
  local spliced = redis.call('HGET', run_key, 'history')
  if status == 'succeeded' and spliced then append_turn(run_key, t, spliced) end
  if first ~= run_id then return '' end
  return redis.call('ZRANGE', t .. ':queue', 0, 0)[1] or ''
end
-- Add the run to its tenant's index ``kind`` (all its runs when nil) with ``value``, scored by
-- its creation time; entries older than the record lifetime go (their runs are gone).
local function index_run(run_key, tenant, kind, value)
  local key = ctx.prefix .. ':tenant:' .. tenant .. ':runs'
  if kind then key = key .. ':' .. kind .. ':' .. value end
  local created = tonumber(redis.call('HGET', run_key, 'created_at') or ctx.now)
  redis.call('ZADD', key, created, ctx.run_id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (ctx.now - ctx.ttl))
  redis.call('EXPIRE', key, ctx.ttl)
end
-- What a tool call was given and gave, gone from its record: its arguments, and its result but
-- for ok and the error's code. Its result stays stored, so a late delivery does not run it again.
local function forget_call(key)
  redis.call('HDEL', key, 'arguments')
  local stored = redis.call('HGET', key, 'result')
  if not stored then return end
  local result = cjson.decode(stored)
  local kept = {ok = result.ok, transcript = 'not_kept'}
  if type(result.error) == 'table' then
    kept.error = {code = result.error.code, message = 'not kept'}
  end
  redis.call('HSET', key, 'result', cjson.encode(kept))
end
-- Events that carry what a person was asked or told: a call's arguments, a question, a message.
local PERSON_EVENTS = {approval_requested = true, input_requested = true, approval_decided = true}
-- The transcript of a run whose tenant keeps none: its messages, its context summary, what a
-- person was asked and decided (its waiting and decisions fields, and those events), and what
-- its tool calls were given and gave (a call still running is cut when it ends:
-- complete_tool.lua).
local function forget_transcript(run_key, run_id)
  redis.call('DEL', run_key .. ':messages')
  redis.call('HDEL', run_key, 'summary', 'waiting', 'decisions')
  if redis.call('HEXISTS', run_key, 'waiting_step') == 1 then
    local ev = run_key .. ':events'
    for _, entry in ipairs(redis.call('XRANGE', ev, '-', '+')) do
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'type' and PERSON_EVENTS[fields[i + 1]] then
          redis.call('XDEL', ev, entry[1])
        end
      end
    end
  end
  for step = 1, tonumber(redis.call('HGET', run_key, 'applied_step') or '0') do
    for i = 0, tonumber(redis.call('HGET', run_key, 'tools:' .. step) or '0') - 1 do
      forget_call(ctx.prefix .. ':tool:' .. run_id .. '-' .. step .. '-' .. i)
    end
  end
end
-- Take the run out of its tenant's runs in flight; the first run of the tenant's queue takes
-- the slot if one is free now: returns its ID, or ''.
local function free_slot(run_key, run_id)
  local tenant = redis.call('HGET', run_key, 'tenant')
  local cap = tonumber(redis.call('HGET', run_key, 'cap') or '0')
  if not tenant or cap <= 0 then return '' end
  local t = ctx.prefix .. ':tenant:' .. tenant
  redis.call('SREM', t .. ':inflight', run_id)
  if redis.call('SCARD', t .. ':inflight') >= cap then return '' end
  return redis.call('ZPOPMIN', t .. ':waiting')[1] or ''
end
-- Mark the run final and release what it held.
-- Returns {runs to start now (space-separated IDs), finished batch, the final status}.
local function finalize(run_key, run_id, status, data)
  redis.call('HSET', run_key, 'status', status, 'finished_at', ctx.now)
  redis.call('ZREM', ctx.prefix .. ':runs:active', run_id)
  redis.call('EXPIRE', run_key, ctx.ttl)
  redis.call('EXPIRE', run_key .. ':messages', ctx.ttl)
  if redis.call('HGET', run_key, 'no_transcript') == '1' then forget_transcript(run_key, run_id) end
  local tenant = redis.call('HGET', run_key, 'tenant')
  if tenant then redis.call('ZREM', ctx.prefix .. ':tenant:' .. tenant .. ':waiting', run_id) end
  local kick = free_slot(run_key, run_id)
  local t = thread_of(run_key)
  if t then
    local next_run = release_thread(run_key, run_id, t, status)
    if next_run ~= '' then kick = kick == '' and next_run or (kick .. ' ' .. next_run) end
  end
  if tenant then
    index_run(run_key, tenant, 'status', status)
    local err = redis.call('HGET', run_key, 'error')
    if err then index_run(run_key, tenant, 'error', cjson.decode(err).code or 'error') end
  end
  local batch_done = count_in_batch(redis.call('HGET', run_key, 'batch_id'), status)
  count_finished(run_key, status)
  emit(run_key, status, data)
  return {kick, batch_done, status}
end

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
--   count_finished(run_key, status)   the run metrics of a run becoming final
--   finalize(run_key, run_id, status, data)  make the run final, free its tenant slot; returns
--                                     {run to start now, finished batch, final status}
-- Keys it derives from ctx.prefix: <p>:runs:active, <p>:tenant:<t>:inflight|waiting,
-- <p>:batch:<id>, the metric hashes.

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
local function count_finished(run_key, status)
  redis.call('HINCRBY', ctx.prefix .. METRIC.runs, status, 1)
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
-- Mark the run final and release what it held.
-- Returns {run to start now, finished batch, the final status}.
local function finalize(run_key, run_id, status, data)
  redis.call('HSET', run_key, 'status', status, 'finished_at', ctx.now)
  redis.call('ZREM', ctx.prefix .. ':runs:active', run_id)
  redis.call('EXPIRE', run_key, ctx.ttl)
  redis.call('EXPIRE', run_key .. ':messages', ctx.ttl)
  local kick = ''
  local tenant = redis.call('HGET', run_key, 'tenant')
  local cap = tonumber(redis.call('HGET', run_key, 'cap') or '0')
  if tenant and cap > 0 then
    local t = ctx.prefix .. ':tenant:' .. tenant
    redis.call('SREM', t .. ':inflight', run_id)
    redis.call('ZREM', t .. ':waiting', run_id)
    if redis.call('SCARD', t .. ':inflight') < cap then
      local popped = redis.call('ZPOPMIN', t .. ':waiting')
      if popped[1] then kick = popped[1] end
    end
  end
  local batch_done = count_in_batch(redis.call('HGET', run_key, 'batch_id'), status)
  count_finished(run_key, status)
  emit(run_key, status, data)
  return {kick, batch_done, status}
end

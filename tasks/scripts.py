"""The Lua scripts behind :mod:`agentfleet.tasks.store`: every transition of a run in one round
trip.

Each script takes a context JSON as ``ARGV[1]``: ``now``, ``prefix`` (the key prefix),
``ttl`` (record lifetime), ``maxlen`` (event stream bound) and ``run_id``. A transition that
matters to a watcher appends its event to ``<p>:run:<id>:events`` in the same script, so the
stream's order is the order of the transitions and nothing is recorded without its event.

Keys derived inside the scripts (tenant slots, batches, metrics) are built from ``prefix``:
the store runs on one Redis, not a cluster.

The fleet's metrics of runs and steps (:mod:`agentfleet.tasks.metrics`) are counted by the
transitions that make them true, in the same round trip: a run when it is created and when it
becomes final, a step when its answer is applied.

A transition never builds on state that a crash of Redis rolled back. A crash can lose the
last writes (``appendfsync everysec``, an asynchronous replica promoted) while workers still
hold what they read before it: a step's tool results, a tool call of a step's answer. Each
applied answer records its generation, ``gen:<step>`` (the token of the claim that applied it,
unique: a step that answers again after a rollback gets a new one); tool calls carry the
generation they were asked in, and their results bring it back. A step whose predecessor's
answer is gone (``rolled_back``), a tool call or result of another generation (``stale``) and
an answer built on one are refused, and the run is made due at once for the watchdog, which
sends what the record says is next.
"""

from __future__ import annotations

from agentfleet.tasks.keys import MetricKeys
from agentfleet.tasks.metrics import RUN_BUCKETS, format_bound

#: The run-latency buckets as a Lua table of {upper bound, field name}.
_RUN_BUCKETS_LUA = "{" + ", ".join(f"{{{b!r}, '{format_bound(b)}'}}" for b in RUN_BUCKETS) + "}"
#: The metric keys the scripts write, after ``prefix``: named in agentfleet.tasks.keys.
_SUFFIX = MetricKeys("")
_METRIC_KEYS_LUA = (
    f"{{runs = '{_SUFFIX.runs}', run_seconds = '{_SUFFIX.run_seconds}', "
    f"step_seconds = '{_SUFFIX.step_seconds}', llm = '{_SUFFIX.llm}'}}"
)

# Shared by the scripts below: append an event; the side effects of a run becoming final.
_COMMON = (
    """
local ctx = cjson.decode(ARGV[1])
local RUN_BUCKETS = """
    + _RUN_BUCKETS_LUA
    + """
local METRIC = """
    + _METRIC_KEYS_LUA
    + """
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
"""
)

# A run that is accepted: kept for the record lifetime, on the watchdog's worklist, counted and
# announced. Shared by CREATE_RUN and ACCEPT.
_ACTIVATE = """
local function activate(run_key, messages_key, due)
  redis.call('EXPIRE', run_key, ctx.ttl)
  redis.call('EXPIRE', messages_key, ctx.ttl)
  redis.call('ZADD', ctx.prefix .. ':runs:active', due, ctx.run_id)
  redis.call('HINCRBY', ctx.prefix .. METRIC.runs, 'enqueued', 1)
  local model, max_steps = unpack(redis.call('HMGET', run_key, 'model', 'max_steps'))
  emit(run_key, 'queued', {model = model, max_steps = tonumber(max_steps)})
end
"""

# KEYS: run, messages. ARGV: ctx, fields json, due, pending ms, messages...
# Pending ms > 0 (``fields.pending`` holds the acceptance token): the run is written but not
# accepted; no step starts until ACCEPT accepts it (BEGIN_STEP answers ``pending``), and it
# expires unless that comes within that many ms. Returns 1, or 0 if the ID exists.
CREATE_RUN = (
    _COMMON
    + _ACTIVATE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local pending = tonumber(ARGV[4])
if pending > 0 then
  redis.call('PEXPIRE', KEYS[1], pending)
  redis.call('PEXPIRE', KEYS[2], pending)
else
  activate(KEYS[1], KEYS[2], ARGV[3])
end
return 1
"""
)

# Accepts a pending record (a run, a tool call, a batch) and keeps its Idempotency-Key's
# answer, in one step: the API's last write for a POST. KEYS: record, its companion key (a
# run's messages, a batch's items; the record again otherwise), the Idempotency-Key slot (any
# unused key without one). ARGV: ctx, token, answer ('' without a key), answer ttl, due (a
# run's, '' otherwise). Returns {'accepted'}; {'expired'} (the record is gone or another
# request's: never accepted, nothing starts); or {'answered', answer} (a request with the same
# key was accepted first: this one's record is deleted, and the caller replays that answer).
ACCEPT = (
    _COMMON
    + _ACTIVATE
    + """
local ours = redis.call('HGET', KEYS[1], 'pending') == ARGV[2]
if ARGV[3] ~= '' then
  local answer = redis.call('GET', KEYS[3])
  if answer then
    if ours then redis.call('DEL', KEYS[1], KEYS[2]) end
    return {'answered', answer}
  end
end
if not ours then return {'expired'} end
redis.call('HDEL', KEYS[1], 'pending')
if ARGV[5] ~= '' then
  activate(KEYS[1], KEYS[2], ARGV[5])
else
  redis.call('EXPIRE', KEYS[1], ctx.ttl)
  redis.call('EXPIRE', KEYS[2], ctx.ttl)
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4]) end
return {'accepted'}
"""
)

# KEYS: run, lease, messages. ARGV: ctx, token, step, lease_ms, max_deliveries, due, worker
BEGIN_STEP = (
    _COMMON
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HEXISTS', KEYS[1], 'pending') == 1 then
  return {'pending', tostring(redis.call('PTTL', KEYS[1]))}
end
local status = redis.call('HGET', KEYS[1], 'status')
if is_final(status) then
  redis.call('ZREM', ctx.prefix .. ':runs:active', ctx.run_id)
  return {'terminal', status}
end
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
  -- The tenant's cap on runs in flight: over it, the run waits its turn in a queue of the
  -- tenant's own, and the run that frees a slot starts the first one waiting.
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
  return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
end
local n = redis.call('HINCRBY', KEYS[1], 'deliveries:' .. ARGV[3], 1)
if n > tonumber(ARGV[5]) then return {'poisoned', tostring(n)} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ctx.now)
  emit(KEYS[1], 'started', {worker = ARGV[7]})
end
redis.call('ZADD', ctx.prefix .. ':runs:active', ARGV[6], ctx.run_id)
if applied < step and step <= tonumber(redis.call('HGET', KEYS[1], 'max_steps') or step) then
  emit(KEYS[1], 'llm_call_started', {step = step})
end
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1)}
"""
)

# The two halves of a step's end, as functions, so that a step that ends the run does both in
# one script. apply: append the step's answer and usage once, as generation ``token``; 1
# applied, 0 applied before, -1 the run is final (cancelled while the model was answering),
# -2 rolled back (the previous step's answer is gone, or is not generation p.after, the one
# this answer was built on). p: {messages: [str], after, prompt_tokens, completion_tokens,
# tools_total, provider, model, worker, metrics (agentfleet.tasks.metrics.step_fields)}. finish:
# mark the step dispatched (and the run final, if p.status), drop the lease; returns {record, run to
# start now, finished batch, final status if this made it final}, or {'rolled_back'} if p.gen (the
# generation of the answer dispatched, or ending the run) is not the step's applied one. p: {due,
# [gen, status, result, error]}.
_STEP_END = """
local function apply(run_key, messages_key, lease_key, token, step, p)
  if is_final(redis.call('HGET', run_key, 'status')) then return -1 end
  local applied = tonumber(redis.call('HGET', run_key, 'applied_step') or '0')
  if applied >= step then return 0 end
  local after = step > 1 and redis.call('HGET', run_key, 'gen:' .. (step - 1))
  if applied < step - 1 or (after and after ~= p.after) then
    rolled_back(run_key, lease_key, token, step)
    return -2
  end
  for _, m in ipairs(p.messages) do redis.call('RPUSH', messages_key, m) end
  redis.call('HINCRBY', run_key, 'prompt_tokens', p.prompt_tokens)
  redis.call('HINCRBY', run_key, 'completion_tokens', p.completion_tokens)
  redis.call('HINCRBY', run_key, 'llm_calls', 1)
  redis.call('HINCRBY', run_key, 'tools_total', p.tools_total)
  redis.call('HSET', run_key, 'applied_step', step, 'step', step, 'updated_at', ctx.now,
             'provider', p.provider, 'tools:' .. step, p.tools_total, 'worker', p.worker,
             'gen:' .. step, token)
  redis.call('HDEL', run_key, 'waiting', 'waiting_since')
  emit(run_key, 'llm_call_finished', {step = step, provider = p.provider, model = p.model,
       prompt_tokens = p.prompt_tokens, completion_tokens = p.completion_tokens,
       tool_calls = p.asked})
  -- A step that dispatches tool calls is finished once its answer is in: its event goes out
  -- now, before the tool calls are published and can start.
  if p.tools_total > 0 then
    emit(run_key, 'step_finished', {step = step, tool_calls = p.tools_total})
  end
  local m = p.metrics
  local steps, llm = ctx.prefix .. METRIC.step_seconds, ctx.prefix .. METRIC.llm
  redis.call('HINCRBY', steps, m.bucket, 1)
  redis.call('HINCRBYFLOAT', steps, 'sum', tostring(m.seconds))
  redis.call('HINCRBY', llm, m.calls, 1)
  redis.call('HINCRBY', llm, m.prompt, p.prompt_tokens)
  redis.call('HINCRBY', llm, m.completion, p.completion_tokens)
  return 1
end
local function finish(run_key, lease_key, token, step, p)
  if p.gen and redis.call('HGET', run_key, 'gen:' .. step) ~= p.gen then
    rolled_back(run_key, lease_key, token, step)
    return {'rolled_back'}
  end
  local follow = {'', '', ''}
  if tonumber(redis.call('HGET', run_key, 'dispatched_step') or '0') < step then
    redis.call('HSET', run_key, 'dispatched_step', step, 'updated_at', ctx.now)
    -- A step with tool calls had its event when its answer was applied.
    if tonumber(redis.call('HGET', run_key, 'tools:' .. step) or '0') == 0 then
      emit(run_key, 'step_finished', {step = step, tool_calls = 0})
    end
  end
  local status = redis.call('HGET', run_key, 'status')
  if p.status then
    if not is_final(status) then
      if p.result then redis.call('HSET', run_key, 'result', p.result) end
      if p.error then redis.call('HSET', run_key, 'error', p.error) end
      local data = {result = p.result}
      if p.error then data = {error = cjson.decode(p.error)} end
      follow = finalize(run_key, ctx.run_id, p.status, data)
    end
  elseif not is_final(status) then
    redis.call('ZADD', ctx.prefix .. ':runs:active', 'XX', p.due, ctx.run_id)
  end
  if redis.call('GET', lease_key) == token then redis.call('DEL', lease_key) end
  return {redis.call('HGETALL', run_key), follow[1], follow[2], follow[3]}
end
"""

# The answer of a step that dispatches tool calls, then its lease dropped unless the run is
# final: the next step may start before this step's task has returned. KEYS: run, messages,
# lease. ARGV: ctx, step, apply json, token. Returns what apply returns.
APPLY_STEP = (
    _COMMON
    + _STEP_END
    + """
local step, p = tonumber(ARGV[2]), cjson.decode(ARGV[3])
local applied = apply(KEYS[1], KEYS[2], KEYS[3], ARGV[4], step, p)
if applied >= 0 and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return applied
"""
)

# KEYS: run, lease. ARGV: ctx, token, step, finish json.
FINISH_STEP = (
    _COMMON
    + _STEP_END
    + "return finish(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[3]), cjson.decode(ARGV[4]))"
)

# A step that ends the run: both in one round trip. KEYS: run, messages, lease. ARGV: ctx,
# token, step, apply json, finish json. Returns {-1} (final already: nothing finished), {-2}
# (rolled back), or {applied, record, run to start now, finished batch, final status}.
APPLY_AND_FINISH_STEP = (
    _COMMON
    + _STEP_END
    + """
local step = tonumber(ARGV[3])
local applied = apply(KEYS[1], KEYS[2], KEYS[3], ARGV[2], step, cjson.decode(ARGV[4]))
if applied < 0 then return {applied} end
local done = finish(KEYS[1], KEYS[3], ARGV[2], step, cjson.decode(ARGV[5]))
return {applied, done[1], done[2], done[3], done[4]}
"""
)

# KEYS: run. ARGV: ctx, reason. Returns {outcome, run to start now, finished batch, final
# status, run whose end no message will record}: a run waiting for its tenant's slot has no
# message in any queue, so the caller publishes one that finds it cancelled.
CANCEL_RUN = (
    _COMMON
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', '', '', '', ''} end
if is_final(status) then return {'final:' .. status, '', '', '', ''} end
redis.call('HSET', KEYS[1], 'cancel_requested_at', ctx.now)
local parked = ''
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant and redis.call('ZSCORE', ctx.prefix .. ':tenant:' .. tenant .. ':waiting', ctx.run_id)
then
  parked = ctx.run_id
end
local follow = finalize(KEYS[1], ctx.run_id, 'cancelled', {reason = ARGV[2]})
return {'cancelled', follow[1], follow[2], follow[3], parked}
"""
)

# KEYS: run, lease. ARGV: ctx, token, step, due. Gives the step back (for a retry): not a
# crash, so not a delivery.
RELEASE_STEP = (
    _COMMON
    + """
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('HINCRBY', KEYS[1], 'deliveries:' .. ARGV[3], -1)
redis.call('ZADD', ctx.prefix .. ':runs:active', 'XX', ARGV[4], ctx.run_id)
return 1
"""
)

# KEYS: lease. ARGV: token. Drops the lease if this token still holds it.
DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: tool. ARGV: ctx, fields json, pending ms. Creates a tool-call record unless one exists:
# 1 created, 0 exists, -1 exists but is pending (another request is accepting it). Pending ms
# > 0: as CREATE_RUN's, with ``fields.pending`` and ``fields.accept`` holding the token.
CREATE_TOOL = (
    _COMMON
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HEXISTS', KEYS[1], 'pending') == 1 then return -1 end
  return 0
end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
local pending = tonumber(ARGV[3])
if pending > 0 then
  redis.call('PEXPIRE', KEYS[1], pending)
else
  redis.call('EXPIRE', KEYS[1], ctx.ttl)
end
return 1
"""
)

# Shared by BEGIN_TOOL and COMPLETE_TOOL: whether the run's step ``step`` holds an answer of
# another generation than ``gen`` (a call of a run's step carries the generation that asked
# for it; standalone calls carry none). Tool call IDs are positional (<run>-<step>-<i>): a step
# that answers again after a crash rolled its answer back dispatches the same IDs, perhaps for
# other model calls, while workers still hold calls of the answer that is gone.
_STALE = """
local function stale(run_key, step, gen)
  if ctx.run_id == '' or gen == '' then return false end
  local current = redis.call('HGET', run_key, 'gen:' .. step)
  return current ~= false and current ~= gen
end
"""

# KEYS: tool, lease, run. ARGV: ctx, token, lease_ms, name, arguments, due, step, call id,
# max_deliveries, acceptance token ('' for calls the API did not create), generation.
# ``cancelled``: the run it belongs to was cancelled; ``stale``: the run's step holds another
# generation; either way the tool must not run. A stored result of another generation than
# the call's is stale too: the call runs again and replaces it. ``refused``: the API never
# accepted this message's call; ``pending``: not yet (PTTL of the record). ``poisoned``: begun
# more than max_deliveries times (each one that began it and stored no result lost its
# worker); the caller holds the lease, to store the failure. Returns {outcome, [result | lease
# ms left | deliveries]}.
BEGIN_TOOL = (
    _COMMON
    + _STALE
    + """
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
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
end
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
return {'ok'}
"""
)

# KEYS: tool, lease, run. ARGV: ctx, token, result json, status, due, step, generation.
# First result wins, with its generation; counts once on the run (or on the batch of a
# standalone call). Returns {result, finished batch}, or {'', ''} if the run's step holds
# another generation: the result is kept out.
COMPLETE_TOOL = (
    _COMMON
    + _STALE
    + """
if stale(KEYS[3], ARGV[6], ARGV[7]) then
  if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
  return {'', ''}
end
local batch_done = ''
if redis.call('HSETNX', KEYS[1], 'result', ARGV[3]) == 1 then
  redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', ctx.now, 'gen', ARGV[7])
  if ctx.run_id ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'tools_done', 1)
    redis.call('ZADD', ctx.prefix .. ':runs:active', 'XX', ARGV[5], ctx.run_id)
    local id = redis.call('HGET', KEYS[1], 'id') or ''
    emit(KEYS[3], 'tool_call_finished', {id = id, name = redis.call('HGET', KEYS[1], 'name'),
         ok = ARGV[4] == 'succeeded', step = tonumber(ARGV[6])})
  end
  batch_done = count_in_batch(redis.call('HGET', KEYS[1], 'batch_id'), ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('EXPIRE', KEYS[1], ctx.ttl)
return {redis.call('HGET', KEYS[1], 'result'), batch_done}
"""
)

# KEYS: tool. ARGV: ctx, reason. A standalone tool call not yet started gets a cancelled
# result (and counts on its batch); one with a result keeps it.
CANCEL_TOOL = (
    _COMMON
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', ''} end
if redis.call('HEXISTS', KEYS[1], 'result') == 1 or redis.call('EXISTS', KEYS[1] .. ':lease') == 1
then
  return {redis.call('HGET', KEYS[1], 'status'), ''}
end
local id = redis.call('HGET', KEYS[1], 'id')
local result = cjson.encode({id = id, name = redis.call('HGET', KEYS[1], 'name'), ok = false,
                             error = {code = 'cancelled', message = ARGV[2]}})
redis.call('HSET', KEYS[1], 'result', result, 'status', 'cancelled', 'finished_at', ctx.now)
return {'cancelled', count_in_batch(redis.call('HGET', KEYS[1], 'batch_id'), 'cancelled')}
"""
)

-- Shared by apply_step.lua, finish_step.lua and apply_and_finish_step.lua (loaded after
-- _common.lua): the two halves of a step's end, so that a step that ends the run does both in
-- one script.
--
-- apply(run_key, messages_key, lease_key, token, step, p): append the step's answer and usage
--   once, as generation ``token``. p: {messages: [str], after, prompt_tokens,
--   completion_tokens, tools_total, asked, llm_calls (optional, 1), provider, model, worker, metrics
--   (agentfleet.tasks.metrics.step_fields), cached_tokens, cost, cache_hits (optional, 0),
--   spend (optional:
--   a list of _spend.lua's spend(s), one per model the step's calls used; absent when the
--   calls were settled one by one against a tenant budget)}. Reads status, applied_step, gen:<step-1>; writes
--   the transcript, usage counters, applied_step, step, tools:<step>, gen:<step>, the step
--   metrics (and the agent metrics), events llm_call_finished (and step_finished if it
--   dispatches tool calls).
--   Returns 1 applied, 0 applied before, -1 the run is final (cancelled while the model
--   answered), -2 rolled back (the previous step's answer is gone, or is not p.after).
-- finish(run_key, lease_key, token, step, p): mark the step dispatched (and the run final, if
--   p.status), drop the lease. p: {due, [gen, status, result, error, release]}. Writes
--   dispatched_step, result/error, the run's due time or its final state; with p.release (the
--   step started child runs), frees the run's tenant slot and sets needs_slot. Returns {record, run to start now,
--   finished batch, final status if this made it final}, or {'rolled_back'} if p.gen is not
--   the step's applied generation.

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
  local cost = p.cost or 0
  if cost > 0 then redis.call('HINCRBYFLOAT', run_key, 'cost', tostring(cost)) end
  if (p.cached_tokens or 0) > 0 then
    redis.call('HINCRBY', run_key, 'cached_tokens', p.cached_tokens)
  end
  local hits = p.cache_hits or 0
  if hits > 0 then redis.call('HINCRBY', run_key, 'cache_hits', hits) end
  for _, s in ipairs(p.spend or {}) do spend(s) end
  -- A typed run's repair rounds make one answer of several calls (older senders: one).
  local calls = p.llm_calls or 1
  redis.call('HINCRBY', run_key, 'llm_calls', calls)
  redis.call('HINCRBY', run_key, 'tools_total', p.tools_total)
  redis.call('HSET', run_key, 'applied_step', step, 'step', step, 'updated_at', ctx.now,
             'provider', p.provider, 'tools:' .. step, p.tools_total, 'worker', p.worker,
             'gen:' .. step, token)
  redis.call('HDEL', run_key, 'waiting', 'waiting_since')
  emit(run_key, 'llm_call_finished', {step = step, provider = p.provider, model = p.model,
       prompt_tokens = p.prompt_tokens, completion_tokens = p.completion_tokens,
       cached_tokens = p.cached_tokens or 0, cost = cost, cache_hits = hits,
       tool_calls = p.asked, worker = p.worker})
  -- A step that dispatches tool calls is finished once its answer is in: its event goes out
  -- now, before the tool calls are published and can start.
  if p.tools_total > 0 then
    emit(run_key, 'step_finished', {step = step, tool_calls = p.tools_total})
  end
  local m = p.metrics
  local steps, llm = ctx.prefix .. METRIC.step_seconds, ctx.prefix .. METRIC.llm
  redis.call('HINCRBY', steps, m.bucket, 1)
  redis.call('HINCRBYFLOAT', steps, 'sum', tostring(m.seconds))
  redis.call('HINCRBY', llm, m.calls, calls)
  redis.call('HINCRBY', llm, m.prompt, p.prompt_tokens)
  redis.call('HINCRBY', llm, m.completion, p.completion_tokens)
  count_agent_usage(run_key, p.prompt_tokens, p.completion_tokens, p.cached_tokens or 0, cost)
  return 1
end
local function finish(run_key, lease_key, token, step, p)
  if p.gen and redis.call('HGET', run_key, 'gen:' .. step) ~= p.gen then
    rolled_back(run_key, lease_key, token, step)
    return {'rolled_back'}
  end
  local follow = {'', '', ''}
  local first = tonumber(redis.call('HGET', run_key, 'dispatched_step') or '0') < step
  if first then
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
  -- A parent waiting on its children holds no tenant slot (a tree can never deadlock its
  -- tenant's cap): its next step takes one again. Not if that step holds the lease already
  -- (its children were that quick): it runs on the slot the run has.
  if p.release and first and not is_final(status)
      and redis.call('EXISTS', lease_key) == 0 then
    local cap = tonumber(redis.call('HGET', run_key, 'cap') or '0')
    if cap > 0 then
      follow[1] = free_slot(run_key, ctx.run_id)
      redis.call('HSET', run_key, 'needs_slot', 1)
    end
  end
  return {redis.call('HGETALL', run_key), follow[1], follow[2], follow[3]}
end

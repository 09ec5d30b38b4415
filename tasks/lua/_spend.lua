-- Shared by settle_spend.lua and the step-applying scripts (loaded after _common.lua): how an
-- LLM call's usage is counted for its tenant.
--
-- spend(s): add one call's usage to its tenant's day and to the spend metrics. s: {day (the
--   tenant's day key), metric (the spend metric hash), ttl (the day key's lifetime), tokens,
--   cost, fields: {tokens, cost, calls} (the day's per-model field names), metrics: {prompt,
--   completion, cached, calls, cost} (field names), prompt, completion, cached, calls (provider
--   calls: 0 for answers from the response cache)}.
--   Field names come from Python (agentfleet.tasks.spend), which writes their labels as JSON.

local function spend(s)
  redis.call('HINCRBY', s.day, 'tokens', s.tokens)
  redis.call('HINCRBYFLOAT', s.day, 'cost', tostring(s.cost))
  redis.call('HINCRBY', s.day, 'calls', s.calls)
  redis.call('HINCRBY', s.day, s.fields.tokens, s.tokens)
  redis.call('HINCRBYFLOAT', s.day, s.fields.cost, tostring(s.cost))
  redis.call('HINCRBY', s.day, s.fields.calls, s.calls)
  redis.call('EXPIRE', s.day, s.ttl)
  local m = s.metrics
  redis.call('HINCRBY', s.metric, m.prompt, s.prompt)
  redis.call('HINCRBY', s.metric, m.completion, s.completion)
  redis.call('HINCRBY', s.metric, m.cached, s.cached)
  redis.call('HINCRBY', s.metric, m.calls, s.calls)
  redis.call('HINCRBYFLOAT', s.metric, m.cost, tostring(s.cost))
end

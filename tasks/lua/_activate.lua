-- Shared by create_run.lua and accept.lua (loaded after _common.lua).
--
-- activate(run_key, messages_key, due): a run that is accepted is kept for the record
-- lifetime, put on the watchdog's worklist (<p>:runs:active, due at ``due``), counted as
-- enqueued in the run metrics and announced with a ``queued`` event. Returns nothing.

local function activate(run_key, messages_key, due)
  redis.call('EXPIRE', run_key, ctx.ttl)
  redis.call('EXPIRE', messages_key, ctx.ttl)
  redis.call('ZADD', ctx.prefix .. ':runs:active', due, ctx.run_id)
  redis.call('HINCRBY', ctx.prefix .. METRIC.runs, 'enqueued', 1)
  local model, max_steps = unpack(redis.call('HMGET', run_key, 'model', 'max_steps'))
  emit(run_key, 'queued', {model = model, max_steps = tonumber(max_steps)})
end

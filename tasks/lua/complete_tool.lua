-- complete_tool: store a tool call's result; the first result wins, with its generation, and
-- counts once on the run (or on the batch of a standalone call). Loaded after _common.lua and
-- _stale.lua.
--
-- KEYS[1]  the tool call's record (hash)
-- KEYS[2]  the tool call's lease (string)
-- KEYS[3]  its run's record (hash; an unused key for a standalone call)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  token: the lease token ('' holds none)
-- ARGV[3]  the result, JSON
-- ARGV[4]  status: succeeded, failed or cancelled
-- ARGV[5]  due: the run's next due time
-- ARGV[6]  step: the run's step that asked for the call
-- ARGV[7]  the generation of the answer that asked for it ('' for none)
-- Reads: the run's gen:<step>, the stored result. Writes: result, status, finished_at, gen;
-- the run's tools_done, due time and event tool_call_finished; the batch's count; drops the
-- lease if the token holds it; the record's lifetime.
-- Returns {result that won, finished batch}, or {'', ''} if the run's step holds another
-- generation (the result is kept out).

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

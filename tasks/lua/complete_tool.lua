-- complete_tool: store a tool call's result; the first result wins, with its generation, and
-- counts once on the run (or on the batch of a standalone call). Loaded after _common.lua and
-- _stale.lua.
--
-- KEYS[1]  the tool call's record (hash)
-- KEYS[2]  the tool call's lease (string)
-- KEYS[3]  its run's record (hash; an unused key for a standalone call)
-- KEYS[4]  the tool-cache metric (hash)
-- KEYS[5]  only on a cache miss whose result is to be kept: the cache entry (string)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  token: the lease token ('' holds none)
-- ARGV[3]  the result, JSON
-- ARGV[4]  status: succeeded, failed or cancelled
-- ARGV[5]  due: the run's next due time
-- ARGV[6]  step: the run's step that asked for the call
-- ARGV[7]  the generation of the answer that asked for it ('' for none)
-- ARGV[8]  what its tool's cache had: 'hit', 'miss', or '' (not cached, or not looked up)
-- ARGV[9]  the metric field counting that ('' with ARGV[8] '')
-- ARGV[10] with KEYS[5]: how long the entry is kept, ms
-- Reads: the run's gen:<step>, the stored result. Writes: result, status, finished_at, gen;
-- the run's tools_done, due time and event tool_call_finished (cached = true for a hit); the
-- batch's count; the cache metric; the cache entry (a successful result only); drops the
-- lease if the token holds it; the record's lifetime; of a final run flagged no_transcript,
-- the call's arguments and result but for ok and the error's code (forget_call, _common.lua).
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
         ok = ARGV[4] == 'succeeded', step = tonumber(ARGV[6]),
         cached = ARGV[8] == 'hit' or nil})
  end
  -- Counted with the result it led to: once a call, however often it was delivered.
  if ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[4], ARGV[9], 1) end
  -- Kept by the transition that stores the result, so no crash leaves an entry for a result
  -- that was not stored; a result that lost to another (a duplicate delivery) is not kept.
  if KEYS[5] and ARGV[4] == 'succeeded' then
    redis.call('SET', KEYS[5], ARGV[3], 'PX', ARGV[10])
  end
  batch_done = count_in_batch(redis.call('HGET', KEYS[1], 'batch_id'), ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
-- A call still running when its run ended: the run's transcript is gone, and so is this.
if ctx.run_id ~= '' and redis.call('HGET', KEYS[3], 'no_transcript') == '1'
    and is_final(redis.call('HGET', KEYS[3], 'status')) then
  forget_call(KEYS[1])
end
redis.call('EXPIRE', KEYS[1], ctx.ttl)
return {redis.call('HGET', KEYS[1], 'result'), batch_done}

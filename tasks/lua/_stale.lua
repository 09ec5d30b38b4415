-- Shared by begin_tool.lua and complete_tool.lua (loaded after _common.lua).
--
-- stale(run_key, step, gen): whether the run's step ``step`` holds an answer of another
-- generation than ``gen`` (reads gen:<step> of the run). A call of a run's step carries the
-- generation that asked for it; standalone calls carry none. Tool call IDs are positional
-- (<run>-<step>-<i>): a step that answers again after a crash rolled its answer back
-- dispatches the same IDs, perhaps for other model calls, while workers still hold calls of
-- the answer that is gone.

local function stale(run_key, step, gen)
  if ctx.run_id == '' or gen == '' then return false end
  local current = redis.call('HGET', run_key, 'gen:' .. step)
  return current ~= false and current ~= gen
end

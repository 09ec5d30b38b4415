-- apply_step: store the answer of a step that dispatches tool calls, then drop its lease unless
-- the run is final: the next step may start before this step's task has returned. Loaded
-- after _common.lua and _step_end.lua.
--
-- KEYS[1]  the run's record (hash)
-- KEYS[2]  the run's messages (list)
-- KEYS[3]  the run's lease (string)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  step: the step number
-- ARGV[3]  the answer, JSON (``p`` of apply in _step_end.lua)
-- ARGV[4]  token: the lease token, and the generation of this answer
-- Reads and writes: as apply (_step_end.lua); deletes the lease if the token holds it.
-- Returns what apply returns: 1, 0, -1 or -2.

local step, p = tonumber(ARGV[2]), cjson.decode(ARGV[3])
local applied = apply(KEYS[1], KEYS[2], KEYS[3], ARGV[4], step, p)
if applied >= 0 and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return applied

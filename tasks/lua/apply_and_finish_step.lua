-- apply_and_finish_step: a step that ends the run: apply, then finish, in one round trip.
-- Loaded after _common.lua and _step_end.lua.
--
-- KEYS[1]  the run's record (hash)
-- KEYS[2]  the run's messages (list)
-- KEYS[3]  the run's lease (string)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  token: the lease token, and the generation of this answer
-- ARGV[3]  step: the step number
-- ARGV[4]  the answer, JSON (``p`` of apply)
-- ARGV[5]  the ending, JSON (``p`` of finish: due, status, result, error)
-- Reads and writes: as apply and finish (_step_end.lua).
-- Returns {-1} (final already: nothing finished), {-2} (rolled back), or {applied, record,
-- run to start now, finished batch, final status}.

local step = tonumber(ARGV[3])
local applied = apply(KEYS[1], KEYS[2], KEYS[3], ARGV[2], step, cjson.decode(ARGV[4]))
if applied < 0 then return {applied} end
local done = finish(KEYS[1], KEYS[3], ARGV[2], step, cjson.decode(ARGV[5]))
return {applied, done[1], done[2], done[3], done[4]}

-- finish_step: mark a step dispatched (and the run final, if asked), drop its lease. Loaded
-- after _common.lua and _step_end.lua.
--
-- KEYS[1]  the run's record (hash)
-- KEYS[2]  the run's lease (string)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  token: the lease token
-- ARGV[3]  step: the step number
-- ARGV[4]  JSON ``p`` of finish in _step_end.lua: {due, [gen, status, result, error]}
-- Reads and writes: as finish (_step_end.lua).
-- Returns what finish returns: {record, run to start now, finished batch, final status} or
-- {'rolled_back'}.

return finish(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[3]), cjson.decode(ARGV[4]))

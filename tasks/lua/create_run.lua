-- create_run: write a queued run and its first messages, unless the ID exists.
--
-- KEYS[1]  the run's record (hash)
-- KEYS[2]  the run's messages (list)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  the record's fields, JSON; ``pending`` holds the acceptance token when pending
-- ARGV[3]  the run's due time (for <p>:runs:active)
-- ARGV[4]  pending ms: > 0 writes the run pending (not accepted: no step starts until
--          accept.lua accepts it, and it expires unless that comes within that many ms)
-- ARGV[5..] the first messages, JSON each
-- Reads: whether the record exists. Writes: the record, the messages; accepted now: their
-- lifetime, <p>:runs:active, the enqueued metric, the ``queued`` event (_activate.lua).
-- Returns 1 created, 0 the ID exists, -1 refused: its thread has an unfinished run and its
-- thread_policy is reject (nothing is kept).

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local pending = tonumber(ARGV[4])
if pending > 0 then
  redis.call('PEXPIRE', KEYS[1], pending)
  redis.call('PEXPIRE', KEYS[2], pending)
elseif not activate(KEYS[1], KEYS[2], ARGV[3]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return -1
end
return 1

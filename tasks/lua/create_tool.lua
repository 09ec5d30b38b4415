-- create_tool: write a tool-call record unless one exists.
--
-- KEYS[1]  the tool call's record (hash)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  the record's fields, JSON (``pending`` and ``accept`` hold the acceptance token
--          when pending)
-- ARGV[3]  pending ms: > 0 writes the record pending, expiring unless accept.lua accepts it
--          within that many ms; 0 keeps it for the record lifetime
-- Returns 1 created, 0 it exists, -1 it exists but is pending (another request is accepting it).

if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HEXISTS', KEYS[1], 'pending') == 1 then return -1 end
  return 0
end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
local pending = tonumber(ARGV[3])
if pending > 0 then
  redis.call('PEXPIRE', KEYS[1], pending)
else
  redis.call('EXPIRE', KEYS[1], ctx.ttl)
end
return 1

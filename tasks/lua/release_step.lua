-- release_step: give a step back for a retry: not a crash, so not a delivery.
--
-- KEYS[1]  the run's record (hash)
-- KEYS[2]  the run's lease (string)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  token: the lease token
-- ARGV[3]  step: the step number
-- ARGV[4]  due: the run's next due time
-- Writes: deletes the lease if the token holds it, deliveries:<step> - 1, the due time in
-- <p>:runs:active (if the run is there). Returns 1.

if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('HINCRBY', KEYS[1], 'deliveries:' .. ARGV[3], -1)
redis.call('ZADD', ctx.prefix .. ':runs:active', 'XX', ARGV[4], ctx.run_id)
return 1

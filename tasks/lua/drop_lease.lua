-- drop_lease: drop a lease if this token still holds it.
--
-- KEYS[1]  the lease (string)
-- ARGV[1]  the token
-- Returns 1 dropped, 0 another token holds it (or none does).

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

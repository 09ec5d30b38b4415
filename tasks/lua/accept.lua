-- accept: accept a pending record (a run, a tool call, a batch) and keep its Idempotency-Key's
-- answer, in one step: the API's last write for a POST.
--
-- KEYS[1]  the pending record (hash)
-- KEYS[2]  its companion: a run's messages, a batch's items; the record again otherwise
-- KEYS[3]  the Idempotency-Key slot (string; any unused key for a request without one)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  the acceptance token the record was written with
-- ARGV[3]  the answer to keep for the key ('' without a key)
-- ARGV[4]  how long the answer is kept, s
-- ARGV[5]  the run's due time ('' if the record is not a run's)
-- Reads: the record's ``pending`` token, the slot. Writes: drops ``pending``, sets the
-- lifetimes (a run is activated, _activate.lua), the slot; deletes its own record when
-- another request answered first.
-- Returns {'accepted'}; {'expired'} (the record is gone or another request's: never
-- accepted, nothing starts); {'answered', answer} (a request with the same key was
-- accepted first: this one's record is deleted, and the caller replays that answer); or
-- {'thread_busy'} (a run with thread_policy reject whose thread has an unfinished run: its
-- record is deleted, nothing starts).

local ours = redis.call('HGET', KEYS[1], 'pending') == ARGV[2]
if ARGV[3] ~= '' then
  local answer = redis.call('GET', KEYS[3])
  if answer then
    if ours then redis.call('DEL', KEYS[1], KEYS[2]) end
    return {'answered', answer}
  end
end
if not ours then return {'expired'} end
if ARGV[5] ~= '' then
  if not activate(KEYS[1], KEYS[2], ARGV[5]) then
    redis.call('DEL', KEYS[1], KEYS[2])
    return {'thread_busy'}
  end
  redis.call('HDEL', KEYS[1], 'pending')
else
  redis.call('HDEL', KEYS[1], 'pending')
  redis.call('EXPIRE', KEYS[1], ctx.ttl)
  redis.call('EXPIRE', KEYS[2], ctx.ttl)
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4]) end
return {'accepted'}

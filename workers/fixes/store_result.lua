-- Store a task's state unless that would overwrite a SUCCESS, or end a run other than by RunFailed.
--
-- KEYS[1]  the task's result key (celery-task-meta-<task id>)
-- KEYS[2]  the run record the task ID would name (<prefix>:run:<task id>); KEYS[1] again when
--          the caller stores no run's end
-- ARGV[1]  the encoded result meta (JSON), as Celery's RedisBackend would write it
-- ARGV[2]  seconds to keep it; 0 keeps it forever
-- ARGV[3]  '1' when the state is a FAILURE other than a run's end (RunFailed), else '0'
--
-- Returns 1 when the meta was written and published on KEYS[1]'s channel, 0 when nothing was
-- written: a SUCCESS is already stored, or a foreign failure would end a run (KEYS[2] exists)
-- that only the task raising RunFailed may end.
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta.status == 'SUCCESS' then return 0 end
end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1

-- decide: record a person's decisions on the calls a waiting run waits for (approve, deny,
-- answer); once every pending call is decided, the run is running again and due at once.
-- All or nothing: a decision that is not allowed changes nothing.
--
-- KEYS[1]     the run's record (hash)
-- KEYS[2..n]  the record (hash) of the tool call of each decision, in the order of ARGV[3]
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  kind: 'approval' or 'input' (decisions only of calls of that kind), or '' (any:
--           a wait that timed out)
-- ARGV[3]  decisions: JSON [{id, decision ('approve' | 'deny' | 'answer'), arguments (JSON
--           text, edited arguments of an approved call), message, result (JSON text: the
--           call's result, for 'deny' and 'answer'), status (that result's status)}]
-- ARGV[4]  due: the run's due time once it runs again
-- Reads: status, waiting, decisions, waiting_step, gen:<step>, tenant, cap. Writes:
-- decisions; each denied or answered call's record (its result, as complete_tool.lua stores
-- one) and the run's tools_done; once all are decided: status -> running, parked_step,
-- needs_slot (a run with a tenant cap takes a slot again), <p>:runs:active; events
-- approval_decided, input_received, resumed.
-- Returns {'missing'}; {'not_waiting', status}; {'not_pending', id}; {'decided', id}
-- (decided before); {'recorded', calls still pending}; {'resumed', step, entry options}.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status ~= 'waiting' then return {'not_waiting', status} end
local waiting = cjson.decode(redis.call('HGET', KEYS[1], 'waiting'))
local decided = cjson.decode(redis.call('HGET', KEYS[1], 'decisions') or '{}')
local pending = {}
for _, c in ipairs(waiting.pending) do pending[c.id] = c end
local decisions = cjson.decode(ARGV[3])
for _, d in ipairs(decisions) do
  local c = pending[d.id]
  if not c or (ARGV[2] ~= '' and c.kind ~= ARGV[2]) then return {'not_pending', d.id} end
  if decided[d.id] then return {'decided', d.id} end
end
local step = tonumber(redis.call('HGET', KEYS[1], 'waiting_step'))
local gen = redis.call('HGET', KEYS[1], 'gen:' .. step) or ''
for i, d in ipairs(decisions) do
  decided[d.id] = {decision = d.decision, arguments = d.arguments, message = d.message}
  if d.result then
    -- The call's result, stored as its tool task would store it: the task that runs it
    -- finds it stored and hands it to the next step without running the tool.
    local call = KEYS[i + 1]
    if redis.call('HSETNX', call, 'result', d.result) == 1 then
      redis.call('HSET', call, 'id', d.id, 'name', pending[d.id].name, 'arguments',
                 pending[d.id].arguments, 'run_id', ctx.run_id, 'status', d.status,
                 'created_at', ctx.now, 'finished_at', ctx.now, 'gen', gen)
      redis.call('HINCRBY', KEYS[1], 'tools_done', 1)
    end
    redis.call('EXPIRE', call, ctx.ttl)
  end
  if pending[d.id].kind == 'approval' then
    emit(KEYS[1], 'approval_decided', {id = d.id, name = pending[d.id].name,
         decision = d.decision, edited = d.arguments ~= nil, message = d.message})
  else
    emit(KEYS[1], 'input_received', {id = d.id, timed_out = ARGV[2] == '' or nil})
  end
end
redis.call('HSET', KEYS[1], 'decisions', cjson.encode(decided), 'updated_at', ctx.now)
local left = 0
for id in pairs(pending) do if not decided[id] then left = left + 1 end end
if left > 0 then return {'recorded', left} end
redis.call('HSET', KEYS[1], 'status', 'running', 'parked_step', step)
redis.call('HDEL', KEYS[1], 'waiting', 'waiting_since')
if tonumber(redis.call('HGET', KEYS[1], 'cap') or '0') > 0 then
  redis.call('HSET', KEYS[1], 'needs_slot', 1)
end
-- Due at once: if the message that resumes it is lost, the watchdog sends its step again.
redis.call('ZADD', ctx.prefix .. ':runs:active', ARGV[4], ctx.run_id)
emit(KEYS[1], 'resumed', {step = step})
return {'resumed', step, redis.call('HGET', KEYS[1], 'entry') or ''}

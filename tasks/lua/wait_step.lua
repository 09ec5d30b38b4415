-- wait_step: store the answer of a step whose tool calls need a person (an approval, an
-- answer), and make the run wait for them: it keeps no lease, no message and no tenant slot,
-- and is due only at its wait's deadline (if any). Loaded after _common.lua, _spend.lua and
-- _step_end.lua.
--
-- KEYS[1]  the run's record (hash)
-- KEYS[2]  the run's messages (list)
-- KEYS[3]  the run's lease (string)
-- ARGV[1]  ctx: JSON {now, prefix (the key prefix), ttl (record lifetime, s), maxlen (event
--           stream bound), run_id ('' for a standalone tool call)}; see _common.lua
-- ARGV[2]  step: the step number
-- ARGV[3]  the answer, JSON (``p`` of apply in _step_end.lua)
-- ARGV[4]  token: the lease token, and the generation of this answer
-- ARGV[5]  waiting: JSON {reason, step, pending: [{id, kind ('approval' | 'input'), name,
--           arguments}], timeout_at}, kept as the run's ``waiting`` field
-- ARGV[6]  the wait's deadline (a Unix time; '' for none): when the watchdog times it out
-- Reads and writes: as apply (_step_end.lua); then status -> waiting, waiting, waiting_since,
-- waiting_step, the lease (dropped), <p>:runs:active, the tenant's inflight and waiting sets,
-- the tenant's status:waiting index; events approval_requested and input_requested.
-- Returns {what apply returned (1, 0, -1 or -2), runs to start now (the freed slot's)}.

local step, p = tonumber(ARGV[2]), cjson.decode(ARGV[3])
local applied = apply(KEYS[1], KEYS[2], KEYS[3], ARGV[4], step, p)
if applied ~= 1 then return {applied, ''} end
redis.call('HSET', KEYS[1], 'status', 'waiting', 'waiting', ARGV[5], 'waiting_since', ctx.now,
           'waiting_step', step)
redis.call('HDEL', KEYS[1], 'decisions')
if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
local active = ctx.prefix .. ':runs:active'
if ARGV[6] ~= '' then
  redis.call('ZADD', active, ARGV[6], ctx.run_id)
else
  -- Nothing is overdue while a person decides: the decision makes it due again.
  redis.call('ZREM', active, ctx.run_id)
end
-- A run waiting for a person holds no slot: a tenant's cap must never be spent on waits.
local kick = free_slot(KEYS[1], ctx.run_id)
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant then index_run(KEYS[1], tenant, 'status', 'waiting') end
local w = cjson.decode(ARGV[5])
local approvals, questions = {}, {}
for _, c in ipairs(w.pending) do
  if c.kind == 'approval' then
    approvals[#approvals + 1] = {id = c.id, name = c.name, arguments = c.arguments}
  else
    questions[#questions + 1] = {id = c.id, question = c.question}
  end
end
if #approvals > 0 then emit(KEYS[1], 'approval_requested', {step = step, calls = approvals}) end
if #questions > 0 then emit(KEYS[1], 'input_requested', {step = step, calls = questions}) end
return {1, kick}

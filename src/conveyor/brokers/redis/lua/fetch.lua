-- The fenced lifecycle of a leased job: fetch, ack, extend, mark (started), reserved, progress.
-- The prelude (prelude.lua) and the conventions of KEYS and ARGV are described there.

-- name: fetch
-- ARGV after the queues: limit, deadline, consumer. Returns {next due time or '', then per lease:
-- id, token, queue index, attempt, m}.
local limit = tonumber(ARGV[3 + NQ])
local deadline = ARGV[4 + NQ]
local consumer = ARGV[5 + NQ]
local out = {''}
local no = 1
local need = limit
local next_due = nil
for qi = 1, NQ do
  local base = base_of(qi)
  local prefix = base .. ':j:'
  promote(base, 1000)
  local leases, leased, nl = {'+inf', LEASE_SENTINEL}, {}, 0
  if need > 0 and redis.call('EXISTS', base .. ':paused') == 0 then
    local prios = redis.call('ZRANGE', base .. ':prios', 0, -1)
    for _, p in ipairs(prios) do
      local list = base .. ':ready:' .. p
      while need > 0 do
        local ids = redis.call('LPOP', list, need)
        if not ids then
          redis.call('ZREM', base .. ':prios', p)
          break
        end
        for _, id in ipairs(ids) do
          local jk = prefix .. id
          local v = redis.call('HMGET', jk, 'state', 'm', 'attempts', 'token')
          -- an id whose job is gone (deleted) or no longer queued (cancelled, leased through a newer
          -- entry) is a stale entry: dropped
          if v[1] == 'queued' then
            -- a record the caller cannot read (no m, written by hand...) is failed by the caller
            local attempts = (tonumber(v[3]) or 0) + 1
            local token = (tonumber(v[4]) or 0) + 1
            redis.call('HSET', jk, 'state', 'running', 'consumer', consumer, 'attempts', attempts, 'token', token,
              'lease_until', deadline, 'started_at', '', 'updated_at', NOW)  -- reserved until marked
            nl = nl + 1
            leases[2 * nl + 1] = deadline; leases[2 * nl + 2] = id; leased[nl] = id
            need = need - 1
            out[no + 1] = id; out[no + 2] = token; out[no + 3] = qi; out[no + 4] = attempts; out[no + 5] = v[2] or ''
            no = no + 5
          end
        end
      end
      if need <= 0 then break end
    end
  end
  if nl > 0 then
    ZADDS[base .. ':leases'] = leases
    local c = COUNTS[base] or {}
    COUNTS[base] = c
    c.queued = (c.queued or 0) - nl
    c.running = (c.running or 0) + nl
    local e = EVENTS[base] or {}
    EVENTS[base] = e
    e.running = leased
  end
  local head = redis.call('ZRANGE', base .. ':schedule', 0, 0, 'WITHSCORES')
  if head[2] and (not next_due or tonumber(head[2]) < tonumber(next_due)) then next_due = head[2] end
end
out[1] = next_due or ''
flush()
return out

-- name: ack
-- ARGV after the queues: S, then S records of 6 fields for plain successes (a result, start and
-- finish times, no error): queue index, id, token, result, started_at, finished_at; then records of
-- 10 fields: queue index, id, token, state, result, error, started_at, finished_at, run_at, history
-- time ('' = none for the optional ones).
-- Returns one 1 (accepted) or 0 (stale token, not running) per record, in that order.
local W = 10
local out = {}
local no = 0
local ok = {}  -- base -> ids succeeded without a unique key (the common case, counted in bulk)
local split = 4 + NQ + 6 * tonumber(ARGV[3 + NQ])
local keys = {}  -- queue index -> {base, its job key prefix, its lease set}
-- The bookkeeping of a success: a job holding a unique key goes through moved() (which frees the
-- key); the common case is counted in bulk via ok[], then retention and any waiting caller.
local function succeeded(base, id, done, key)
  if key then
    moved(base, id, 'running', 'succeeded', done, key)
  else
    local list = ok[base]
    if not list then list = {}; ok[base] = list end
    list[#list + 1] = id
    finished(base, done, id)
    notify(base, id)
  end
end
for r = 4 + NQ, split - 1, 6 do
  -- the hot path: one write, counted in bulk below
  local k = keys[ARGV[r]]
  if not k then
    local base = base_of(tonumber(ARGV[r]))
    k = {base, base .. ':j:', base .. ':leases'}
    keys[ARGV[r]] = k
  end
  local base = k[1]
  local id = ARGV[r + 1]
  local jk = k[2] .. id
  local v = redis.call('HMGET', jk, 'state', 'token', 'key')
  no = no + 1
  if v[1] ~= 'running' or v[2] ~= ARGV[r + 2] then
    out[no] = 0
  else
    out[no] = 1
    zrem(k[3], id)
    local done = ARGV[r + 5]
    redis.call('HSET', jk, 'state', 'succeeded', 'updated_at', NOW, 'lease_until', '', 'consumer', '',
      'started_at', ARGV[r + 4], 'result', ARGV[r + 3], 'finished_at', done)
    succeeded(base, id, done, v[3])
  end
end
for r = split, #ARGV, W do
  local base = base_of(tonumber(ARGV[r]))
  local id, token, state = ARGV[r + 1], ARGV[r + 2], ARGV[r + 3]
  local jk = base .. ':j:' .. id
  local v = redis.call('HMGET', jk, 'state', 'token', 'key')
  if v[1] ~= 'running' or v[2] ~= token then
    out[#out + 1] = 0
  elseif state == 'succeeded' then
    -- the hot path: one write, counted in bulk below
    out[#out + 1] = 1
    zrem(base .. ':leases', id)
    local started, result, done = ARGV[r + 6], ARGV[r + 4], ARGV[r + 7]
    if done == '' then done = NOW end
    if started ~= '' and result ~= '' and ARGV[r + 5] == '' then
      redis.call('HSET', jk, 'state', 'succeeded', 'updated_at', NOW, 'lease_until', '', 'consumer', '',
        'started_at', started, 'result', result, 'finished_at', done)
    else
      local f = {'state', 'succeeded', 'updated_at', NOW, 'lease_until', '', 'consumer', '', 'finished_at', done}
      if started ~= '' then f[#f + 1] = 'started_at'; f[#f + 1] = started end
      if result ~= '' then f[#f + 1] = 'result'; f[#f + 1] = result end
      if ARGV[r + 5] ~= '' then f[#f + 1] = 'error'; f[#f + 1] = ARGV[r + 5] end
      redis.call('HSET', jk, unpack(f))
    end
    succeeded(base, id, done, v[3])
  else
    out[#out + 1] = 1
    zrem(base .. ':leases', id)
    local w = redis.call('HMGET', jk, 'cancel_requested', 'attempts')
    local key = v[3]
    local final = state
    if w[1] == '1' and (state == 'queued' or state == 'scheduled') then final = 'cancelled' end
    if state == 'queued' then
      -- handed back unstarted: the delivery is not counted as an attempt; with a later run_at it
      -- waits in the schedule (a back-off), and its error (who refused it) is kept for the next worker
      local attempts = math.max((tonumber(w[2]) or 1) - 1, 0)
      local err, run_at = ARGV[r + 5], ARGV[r + 8]
      if err ~= '' then redis.call('HSET', jk, 'error', err) end
      if final == 'cancelled' then
        redis.call('HSET', jk, 'state', final, 'attempts', attempts, 'finished_at', NOW, 'updated_at', NOW,
          'lease_until', '', 'consumer', '')
        moved(base, id, 'running', final, NOW, key)
      elseif run_at ~= '' and tonumber(run_at) > now then
        redis.call('HSET', jk, 'state', 'scheduled', 'attempts', attempts, 'run_at', run_at, 'updated_at', NOW,
          'lease_until', '', 'consumer', '')
        zadd(base .. ':schedule', run_at, id)
        WAKES[base] = (WAKES[base] or 0) + 1  -- a waiting consumer learns the new due time
        moved(base, id, 'running', 'scheduled')
      else
        redis.call('HSET', jk, 'state', final, 'attempts', attempts, 'run_at', NOW, 'updated_at', NOW,
          'lease_until', '', 'consumer', '')
        moved(base, id, 'running', final)
        ready(base, id, priority_of(header(jk)), true)
      end
    else
      local result, err, started, ended, run_at = ARGV[r + 4], ARGV[r + 5], ARGV[r + 6], ARGV[r + 7], ARGV[r + 8]
      local f = {'state', final, 'updated_at', NOW, 'lease_until', '', 'consumer', ''}
      if started ~= '' then f[#f + 1] = 'started_at'; f[#f + 1] = started end
      if result ~= '' then f[#f + 1] = 'result'; f[#f + 1] = result end
      if err ~= '' then f[#f + 1] = 'error'; f[#f + 1] = err end
      if err == '' then err = 'null' end
      f[#f + 1] = 'history'
      f[#f + 1] = append_history(jk, '{"attempt":' .. (tonumber(w[2]) or 0) .. ',"at":' .. ARGV[r + 9] ..
        ',"state":"' .. state .. '","error":' .. err .. '}')
      local done = nil
      if final == 'scheduled' then
        if run_at == '' then run_at = NOW end
        f[#f + 1] = 'run_at'; f[#f + 1] = run_at
        zadd(base .. ':schedule', run_at, id)
        WAKES[base] = (WAKES[base] or 0) + 1
      else
        done = ended
        if done == '' then done = NOW end
        f[#f + 1] = 'finished_at'; f[#f + 1] = done
      end
      redis.call('HSET', jk, unpack(f))
      moved(base, id, 'running', final, done, key)
    end
  end
end
for base, ids in pairs(ok) do
  local c = COUNTS[base] or {}
  COUNTS[base] = c
  c.running = (c.running or 0) - #ids
  c.succeeded = (c.succeeded or 0) + #ids
  local e = EVENTS[base] or {}
  EVENTS[base] = e
  if e.succeeded then
    for _, id in ipairs(ids) do e.succeeded[#e.succeeded + 1] = id end
  else
    e.succeeded = ids
  end
end
flush()
return out

-- name: extend
-- ARGV after the queues: deadline, then (queue index, id, token) per lease.
-- Returns per lease: 0 lost (not running under that token), 1 extended, 2 extended and cancel requested.
local deadline = ARGV[3 + NQ]
local out = {}
for r = 4 + NQ, #ARGV, 3 do
  local base = base_of(tonumber(ARGV[r]))
  local id = ARGV[r + 1]
  local jk = base .. ':j:' .. id
  local v = redis.call('HMGET', jk, 'state', 'token', 'cancel_requested')
  if v[1] ~= 'running' or v[2] ~= ARGV[r + 2] then
    out[#out + 1] = 0
  else
    redis.call('HSET', jk, 'lease_until', deadline)
    zadd(base .. ':leases', deadline, id)
    if v[3] == '1' then out[#out + 1] = 2 else out[#out + 1] = 1 end
  end
end
flush()
return out

-- name: mark
-- ARGV after the queues: (queue index, id, token, started_at) per mark. Records when jobs still
-- running under that token began, and logs them in the feed (state running, started).
local started = {}
for r = 3 + NQ, #ARGV, 4 do
  local base, id = base_of(tonumber(ARGV[r])), ARGV[r + 1]
  local jk = base .. ':j:' .. id
  local v = redis.call('HMGET', jk, 'state', 'token')
  if v[1] == 'running' and v[2] == ARGV[r + 2] then
    redis.call('HSET', jk, 'started_at', ARGV[r + 3], 'updated_at', NOW)
    push(started, base, id)
  end
end
for base, ids in pairs(started) do
  feed(base, 'running', ids, 'started')
end
return 0

-- name: reserved
-- Returns per queue how many of its leased jobs have not been marked started.
local out = {}
for qi = 1, NQ do
  local base = base_of(qi)
  local n = 0
  for _, id in ipairs(leased_before(base, '+inf')) do
    local v = redis.call('HMGET', base .. ':j:' .. id, 'state', 'started_at')
    if v[1] == 'running' and (not v[2] or v[2] == '') then n = n + 1 end
  end
  out[qi] = n
end
return out

-- name: progress
-- ARGV after the queue: id, token, fraction ('' = none), message, has message ('1'/'0').
local base = base_of(1)
local jk = base .. ':j:' .. ARGV[4]
local v = redis.call('HMGET', jk, 'state', 'token')
if v[1] ~= 'running' or v[2] ~= ARGV[5] then return 0 end
redis.call('HSET', jk, 'progress', ARGV[6], 'updated_at', NOW)
if ARGV[8] == '1' then
  redis.call('HSET', jk, 'progress_message', ARGV[7])
else
  redis.call('HDEL', jk, 'progress_message')
end
feed(base, 'running', {ARGV[4]}, 'progress')
return 1

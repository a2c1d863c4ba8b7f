-- The pairing hooks of the Redis store (pairing.py): claim delivered jobs by id, and the outbox.
-- The prelude (prelude.lua) and the conventions of KEYS and ARGV are described there. A paired
-- Redis store needs no new structure for its outbox: a job that becomes queued is pushed to its
-- ready list by every path (enqueue, promote, hand back, lost lease, retry by hand) as before, and
-- the ready lists are what the outbox reads. A job taken from them for a send waits in
-- <base>:sending until the send is marked done; maintenance sends what is still there again.

-- name: pair_claim
-- ARGV after the queues: deadline, consumer, then (queue index, id) pairs. Returns per lease:
-- id, token, queue index, attempt, m.
local deadline = ARGV[3 + NQ]
local consumer = ARGV[4 + NQ]
local out = {}
local paused = {}
for i = 5 + NQ, #ARGV, 2 do
  local qi = tonumber(ARGV[i])
  local id = ARGV[i + 1]
  local base = base_of(qi)
  if paused[base] == nil then
    paused[base] = redis.call('EXISTS', base .. ':paused') == 1
    if not paused[base] then zadd(base .. ':leases', '+inf', LEASE_SENTINEL) end
  end
  local jk = base .. ':j:' .. id
  local v = redis.call('HMGET', jk, 'state', 'm', 'attempts', 'token')
  if v[1] == 'queued' and not paused[base] then
    local attempts = (tonumber(v[3]) or 0) + 1
    local token = (tonumber(v[4]) or 0) + 1
    redis.call('HSET', jk, 'state', 'running', 'consumer', consumer, 'attempts', attempts, 'token', token,
      'lease_until', deadline, 'started_at', '', 'updated_at', NOW)  -- reserved until marked
    zadd(base .. ':leases', deadline, id)
    zrem(base .. ':sending', id)
    local c = COUNTS[base] or {}
    COUNTS[base] = c
    c.queued = (c.queued or 0) - 1
    c.running = (c.running or 0) + 1
    local e = EVENTS[base] or {}
    EVENTS[base] = e
    local ids = e.running or {}
    e.running = ids
    ids[#ids + 1] = id
    local n = #out
    out[n + 1] = id; out[n + 2] = token; out[n + 3] = qi; out[n + 4] = attempts; out[n + 5] = v[2] or ''
  end
end
flush()
return out

-- name: pair_take
-- ARGV after the queues: limit, then (queue index, id, priority) triples: take those (the jobs one
-- enqueue wrote), else the queues' sends not marked done and their ready lists. Returns (queue
-- index, id, priority) triples of the queued jobs taken (now in <base>:sending).
local limit = tonumber(ARGV[3 + NQ])
local out = {}
local n = 0
local function take(base, qi, id, p)
  if redis.call('HGET', base .. ':j:' .. id, 'state') == 'queued' then
    redis.call('ZADD', base .. ':sending', NOW, id)
    out[#out + 1] = qi; out[#out + 1] = id; out[#out + 1] = p
    n = n + 1
  else
    redis.call('ZREM', base .. ':sending', id)
  end
end
if #ARGV >= 4 + NQ + 1 then
  for i = 4 + NQ, #ARGV, 3 do
    local qi, id, p = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
    local base = base_of(qi)
    if redis.call('LREM', base .. ':ready:' .. p, -1, id) > 0 then take(base, qi, id, p) end
  end
  return out
end
for qi = 1, NQ do
  local base = base_of(qi)
  for _, id in ipairs(redis.call('ZRANGE', base .. ':sending', 0, limit - n - 1)) do
    take(base, qi, id, priority_of(header(base .. ':j:' .. id)))
  end
  for _, p in ipairs(redis.call('ZRANGE', base .. ':prios', 0, -1)) do
    local list = base .. ':ready:' .. p
    while n < limit do
      local ids = redis.call('LPOP', list, limit - n)
      if not ids then
        redis.call('ZREM', base .. ':prios', p)
        break
      end
      for _, id in ipairs(ids) do take(base, qi, id, p) end
    end
    if n >= limit then break end
  end
  if n >= limit then break end
end
return out

-- name: pair_sent
-- ARGV after the queues: (queue index, id, priority) triples whose send is done (a job handed back
-- in place is in its ready list again: taken out, its delivery was requeued).
for i = 3 + NQ, #ARGV, 3 do
  local base = base_of(tonumber(ARGV[i]))
  redis.call('ZREM', base .. ':sending', ARGV[i + 1])
  redis.call('LREM', base .. ':ready:' .. ARGV[i + 2], 1, ARGV[i + 1])
end
return 0

-- name: pair_promote
-- Due scheduled jobs of the queues to their ready lists (the outbox). Returns how many.
local n = 0
for qi = 1, NQ do n = n + promote(base_of(qi), 1000) end
flush()
return n

-- name: pair_resend
-- Every queued job of the queues to be sent again (the transport lost what it held).
for qi = 1, NQ do
  local base = base_of(qi)
  while index(base, 1000) > 0 do end
  for _, id in ipairs(redis.call('ZRANGE', base .. ':ids', 0, -1)) do
    if redis.call('HGET', base .. ':j:' .. id, 'state') == 'queued' then
      redis.call('ZADD', base .. ':sending', NOW, id)
    end
  end
end
return 0

-- name: pair_purge
-- ARGV after the queue: how many jobs at most. Deletes the queued jobs of a paired store, which are
-- not in the ready lists (a transport carries them): read from the index of every id.
-- Returns {deleted, 1 if more left}.
local base = base_of(1)
local max = tonumber(ARGV[4])
local n, more = 0, 0
index(base, 1000000000)
local offset = 0
while more == 0 do
  -- removals are buffered until flush, so positions do not move while scanning
  local ids = redis.call('ZRANGE', base .. ':ids', offset, offset + 999)
  if #ids == 0 then break end
  offset = offset + #ids
  for _, id in ipairs(ids) do
    if n >= max then more = 1; break end
    if redis.call('HGET', base .. ':j:' .. id, 'state') == 'queued' then
      n = n + remove(base, id)
      zrem(base .. ':sending', id)
    end
  end
end
flush()
return {n, more}

-- Enqueue scripts of the Redis broker: new jobs into the ready lists or the schedule.
-- The prelude (prelude.lua) and the conventions of KEYS and ARGV are described there.

-- name: enqueue
-- ARGV after the queues: 'u', queue index, priority, then (id, m) per message: the usual batch, of one
-- queue and one priority, queued now, without unique keys, of distinct ids. Or 'r', then records of 6
-- fields: queue index, id, key ('' = none), run_at ('' = queued now), priority, m (the fixed part,
-- see header()). Returns {position, existing id, ...} for the messages that did not create a job
-- (a duplicate key or id).
local out = {}
if ARGV[3 + NQ] == 'u' then
  local base, p = base_of(tonumber(ARGV[4 + NQ])), ARGV[5 + NQ]
  local prefix = base .. ':j:'
  local jks, n = {}, 0
  for r = 6 + NQ, #ARGV, 2 do n = n + 1; jks[n] = prefix .. ARGV[r] end
  local any = 0
  for i = 1, n, 4000 do any = any + redis.call('EXISTS', unpack(jks, i, math.min(i + 3999, n))) end
  local ids, k = {}, 0
  for i = 1, n do
    local r = 4 + NQ + 2 * i
    if any > 0 and redis.call('EXISTS', jks[i]) == 1 then
      out[#out + 1] = i; out[#out + 1] = ARGV[r]
    else
      redis.call('HSET', jks[i], 'state', 'queued', 'm', ARGV[r + 1])
      k = k + 1; ids[k] = ARGV[r]
    end
  end
  if k > 0 then
    local list = base .. ':ready:' .. p
    RPUSHES[list] = ids
    PRIOS[list] = p
    WAKES[base] = k
    RPUSHES[base .. ':fresh'] = ids  -- flush only reads the lists
    COUNTS[base] = {queued = k}
    EVENTS[base] = {queued = ids}
  end
  flush()
  return out
end
local W = 6
local first = 4 + NQ
local seen = {}
local jks = {}
for r = first, #ARGV, W do jks[#jks + 1] = base_of(tonumber(ARGV[r])) .. ':j:' .. ARGV[r + 1] end
-- One EXISTS over the whole batch: when no job exists yet (the usual case) none is checked alone.
local any = 0
for i = 1, #jks, 4000 do any = any + redis.call('EXISTS', unpack(jks, i, math.min(i + 3999, #jks))) end
local added = {}
local position = 0
for r = first, #ARGV, W do
  position = position + 1
  local qi, id, key, run_at = tonumber(ARGV[r]), ARGV[r + 1], ARGV[r + 2], ARGV[r + 3]
  local base = base_of(qi)
  local jk = jks[position]
  local holder = nil
  if key ~= '' then holder = redis.call('HGET', KEYMAP, key) end
  if holder then
    out[#out + 1] = position; out[#out + 1] = holder
  elseif seen[jk] or (any > 0 and redis.call('EXISTS', jk) == 1) then
    out[#out + 1] = position; out[#out + 1] = id
  else
    seen[jk] = true
    local state = 'queued'
    if run_at == '' then
      redis.call('HSET', jk, 'state', 'queued', 'm', ARGV[r + 5])
      ready(base, id, ARGV[r + 4], false)
    else
      state = 'scheduled'
      redis.call('HSET', jk, 'state', 'scheduled', 'm', ARGV[r + 5], 'run_at', run_at)
      zadd(base .. ':schedule', run_at, id)
      WAKES[base] = (WAKES[base] or 0) + 1  -- a waiting consumer learns the new due time
    end
    if key ~= '' then
      redis.call('HSET', jk, 'key', key)
      redis.call('HSET', KEYMAP, key, id)
    end
    push(RPUSHES, base .. ':fresh', id)
    local a = added[base]
    if not a then a = {queued = {}, scheduled = {}}; added[base] = a end
    local list = a[state]
    list[#list + 1] = id
  end
end
for base, a in pairs(added) do
  for state, ids in pairs(a) do
    if #ids > 0 then
      local c = COUNTS[base]
      if not c then c = {}; COUNTS[base] = c end
      c[state] = (c[state] or 0) + #ids
      local e = EVENTS[base]
      if not e then e = {}; EVENTS[base] = e end
      e[state] = ids
    end
  end
end
flush()
return out

-- name: enqueue_one
-- standalone (no prelude: a single enqueue pays for every line of it, ~5 us)
-- The usual single enqueue, as the 'u' branch of enqueue does it for a batch of one: a message
-- queued now without a unique key. ARGV after the queue: id, priority, m. Returns {} when the job
-- was created, {1, id} when a job with that id exists (a retried call whose first try went through).
local base, id, p = KEYS[2], ARGV[4], ARGV[5]
local jk = base .. ':j:' .. id
if redis.call('EXISTS', jk) == 1 then return {1, id} end
redis.call('HSET', jk, 'state', 'queued', 'm', ARGV[6])
if redis.call('RPUSH', base .. ':ready:' .. p, id) == 1 then
  redis.call('ZADD', base .. ':prios', -tonumber(p), p)
end
redis.call('RPUSH', base .. ':fresh', id)
redis.call('HINCRBY', base .. ':counts', 'queued', 1)
-- 16: the prelude's WAKE (tokens kept per wake list), written out since this script has no prelude
if redis.call('RPUSH', base .. ':wake', '1') > 16 then redis.call('LTRIM', base .. ':wake', 0, 15) end
-- the feed entry of the prelude's feed() (FEED_KEEP written out): one Stream per server, or the queue's own
local feed = ARGV[1] .. ':feed'
if KEYS[1] ~= ARGV[1] .. ':keys' then feed = base .. ':feed' end
redis.call('XADD', feed, 'MAXLEN', '~', '5000', '*', 'q', ARGV[3], 's', 'queued', 't', ARGV[2],
  'i', cjson.encode({id}))
return {}

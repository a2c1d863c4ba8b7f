-- Housekeeping and operator control: recover, release, cancel, retry, delete, purge, prune.
-- The prelude (prelude.lua) and the conventions of KEYS and ARGV are described there.

-- name: recover
-- ARGV after the queues: the error (JSON) recorded for an expired lease, how many leases at most per
-- queue. Expired leases come back (or fail), due jobs are promoted, new ids join the list index (as
-- many at most: a big batch's ids are indexed by several calls, so that none blocks Redis for long).
-- Returns {leases recovered, 1 when there are more expired leases or due jobs than handled, 1 when
-- there are more new ids}.
local err = ARGV[3 + NQ]
local max = tonumber(ARGV[4 + NQ])
local n, more, fresh = 0, 0, 0
for qi = 1, NQ do
  local base = base_of(qi)
  local expired = leased_before(base, NOW, max)
  if #expired == max then more = 1 end
  for _, id in ipairs(expired) do n = n + lose(base, id, err) end
  if promote(base, max) == max then more = 1 end
  if index(base, max) == max then fresh = 1 end
end
flush()
return {n, more, fresh}

-- name: release
-- ARGV after the queues: consumer, error (JSON). Every lease held by the consumer comes back.
local consumer, err = ARGV[3 + NQ], ARGV[4 + NQ]
local n = 0
for qi = 1, NQ do
  local base = base_of(qi)
  for _, id in ipairs(leased_before(base, '+inf')) do
    if redis.call('HGET', base .. ':j:' .. id, 'consumer') == consumer then n = n + lose(base, id, err) end
  end
end
flush()
return n

-- name: cancel
-- ARGV after the queue: id. Returns the state after ('' when there is no such job).
local base = base_of(1)
local id = ARGV[4]
local jk = base .. ':j:' .. id
local v = redis.call('HMGET', jk, 'state', 'key')
if not v[1] then return '' end
if v[1] == 'queued' or v[1] == 'scheduled' then
  -- a queued job's entry in its ready list stays and is dropped when reached (it is no longer queued)
  if v[1] == 'scheduled' then redis.call('ZREM', base .. ':schedule', id) end
  redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', NOW, 'updated_at', NOW)
  moved(base, id, v[1], 'cancelled', NOW, v[2])
  flush()
  return 'cancelled'
end
if v[1] == 'running' then
  redis.call('HSET', jk, 'cancel_requested', '1', 'updated_at', NOW)
  feed(base, 'running', {id}, 'cancel_requested')  -- watchers learn that a cancellation is pending
end
return v[1]

-- name: retry
-- ARGV after the queue: id. Returns 'queued', or '' (no such job), 'state:<state>' (not failed or
-- cancelled), 'key' (another active job holds its unique key).
local base = base_of(1)
local id = ARGV[4]
local jk = base .. ':j:' .. id
local v = redis.call('HMGET', jk, 'state', 'key')
if not v[1] then return '' end
if v[1] ~= 'failed' and v[1] ~= 'cancelled' then return 'state:' .. v[1] end
if v[2] then
  if redis.call('HEXISTS', KEYMAP, v[2]) == 1 then return 'key' end
  redis.call('HSET', KEYMAP, v[2], id)
end
redis.call('HSET', jk, 'state', 'queued', 'attempts', 0, 'finished_at', '', 'cancel_requested', '0',
  'run_at', NOW, 'updated_at', NOW)
redis.call('HDEL', jk, 'error')
moved(base, id, v[1], 'queued')
ready(base, id, priority_of(header(jk)), true)
flush()
return 'queued'

-- name: delete
-- ARGV after the queue: id. Returns 1 when a job (not running) was deleted.
local n = remove(base_of(1), ARGV[4])
flush()
return n

-- name: purge
-- ARGV after the queue: how many jobs at most, then the states. Returns {deleted, 1 if more left}.
local base = base_of(1)
local max = tonumber(ARGV[4])
local n, more = 0, 0
for i = 5, #ARGV do
  local state = ARGV[i]
  if n >= max then more = 1; break end
  if state == 'queued' then
    local prios = redis.call('ZRANGE', base .. ':prios', 0, -1)
    for _, p in ipairs(prios) do
      local list = base .. ':ready:' .. p
      while n < max do
        local ids = redis.call('LPOP', list, math.min(1000, max - n))
        if not ids then redis.call('ZREM', base .. ':prios', p); break end
        for _, id in ipairs(ids) do
          if redis.call('HGET', base .. ':j:' .. id, 'state') == 'queued' then n = n + remove(base, id) end
        end
      end
      if n >= max then more = 1; break end
    end
  elseif state ~= 'running' then
    local source = base .. ':s:' .. state
    if state == 'scheduled' then source = base .. ':schedule' end
    if state == 'succeeded' then
      index(base, 1000000000)
      source = base .. ':ids'
    end
    -- removals are buffered until flush, so positions do not move while scanning
    local offset = 0
    while true do
      local ids = redis.call('ZRANGE', source, offset, offset + 999)
      if #ids == 0 then break end
      offset = offset + #ids
      for _, id in ipairs(ids) do
        if n >= max then more = 1; break end
        local now_state = redis.call('HGET', base .. ':j:' .. id, 'state')
        if now_state == state then
          n = n + remove(base, id)
        elseif not now_state and state ~= 'succeeded' then
          zrem(source, id)  -- an entry whose job is gone
        end
      end
      if more == 1 then break end
    end
  end
end
flush()
return {n, more}

-- name: prune
-- ARGV after the queue: cutoff, how many entries at most. Deletes succeeded and cancelled jobs
-- finished before the cutoff. Returns {deleted, 1 if more left}.
local base = base_of(1)
local cut, max = tonumber(ARGV[4]), tonumber(ARGV[5])
local n, scanned, more = 0, 0, 0
local function check(id)
  local v = redis.call('HMGET', base .. ':j:' .. id, 'state', 'finished_at')
  if (v[1] == 'succeeded' or v[1] == 'cancelled') and (tonumber(v[2]) or cut) < cut then n = n + remove(base, id) end
end
local seconds = redis.call('ZRANGEBYSCORE', base .. ':done', '-inf', '(' .. ARGV[4], 'LIMIT', 0, 100)
for _, second in ipairs(seconds) do
  local list = base .. ':done:' .. second
  if tonumber(second) + 1 <= cut then
    -- a whole second before the cutoff: every entry goes (deleted, or stale)
    while scanned < max do
      local ids = redis.call('LPOP', list, 500)
      if not ids then
        zrem(base .. ':done', second)
        break
      end
      scanned = scanned + #ids
      for _, id in ipairs(ids) do check(id) end
    end
  else
    -- the second the cutoff falls in: its entries finished after the cutoff stay
    for _, id in ipairs(redis.call('LRANGE', list, 0, -1)) do check(id) end
  end
  if scanned >= max then more = 1; break end
end
if #seconds == 100 then more = 1 end
flush()
return {n, more}

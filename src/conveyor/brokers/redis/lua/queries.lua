-- Store queries that need a script: watch (Job.result waiting) and page (listing jobs).
-- The prelude (prelude.lua) and the conventions of KEYS and ARGV are described there.

-- name: watch
-- ARGV after the queue: id, then '1' (a waiter comes: counted unless the job has ended; returns the
-- job's state, '' when there is none) or '-1' (a waiter leaves without having been woken). With
-- '1', an optional third: the waiter's own wake key (a suffix of the job's), pushed at once when
-- the job has ended or does not exist, so that a BLPOP sent behind this script returns at once.
local base = base_of(1)
local id = ARGV[4]
if ARGV[5] == '1' then
  local state = redis.call('HGET', base .. ':j:' .. id, 'state')
  if state and state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
    redis.call('HINCRBY', base .. ':waiters', id, 1)
    return state
  end
  if ARGV[6] then
    local mine = base .. ':w:' .. id .. ':' .. ARGV[6]
    redis.call('RPUSH', mine, '1')
    redis.call('EXPIRE', mine, 60)  -- taken at once by the BLPOP behind, unless that was lost
  end
  return state or ''
end
if redis.call('HINCRBY', base .. ':waiters', id, -1) <= 0 then redis.call('HDEL', base .. ':waiters', id) end
return ''

-- name: page
-- ARGV after the queue: index ('ids', 's:failed', 's:cancelled', 'leases'), cursor ('' = from the
-- newest), how many, state filter, task filter, scan budget. Returns {last id scanned when the
-- budget ran out or '', ids newest first...}.
local base = base_of(1)
local which, cursor, want = ARGV[4], ARGV[5], tonumber(ARGV[6])
local state, task, budget = ARGV[7], ARGV[8], tonumber(ARGV[9])
local out = {''}
local function matches(id)
  if state == '' and task == '' then
    return redis.call('EXISTS', base .. ':j:' .. id) == 1
  end
  local jk = base .. ':j:' .. id
  local st = redis.call('HGET', jk, 'state')
  if not st or (state ~= '' and st ~= state) then return false end
  return task == '' or header(jk)[1] == task
end
if which == 'leases' then
  local ids = leased_before(base, '+inf')
  for _, id in ipairs(ids) do
    if matches(id) then out[#out + 1] = id end
  end
  return out  -- few: sorted and cut by the caller
end
if which == 'ids' then index(base, 1000000000) end
local key = base .. ':' .. which
local top = '+'
if cursor ~= '' then top = '(' .. cursor end
local scanned = 0
local found = 0  -- want + 1 matches tell the caller there is a next page
while found <= want do
  local ids = redis.call('ZREVRANGEBYLEX', key, top, '-', 'LIMIT', 0, 200)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    if matches(id) then
      found = found + 1
      out[found + 1] = id
      if found > want then break end
    elseif redis.call('EXISTS', base .. ':j:' .. id) == 0 then
      redis.call('ZREM', key, id)  -- the job was deleted while its id waited in the fresh list
    end
  end
  top = '(' .. ids[#ids]
  if scanned >= budget and found <= want then
    out[1] = ids[#ids]
    break
  end
end
return out

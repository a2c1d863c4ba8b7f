-- Atomic operations of the Redis broker, in files by concern (this prelude, enqueue.lua, fetch.lua,
-- control.lua, queries.lua). Each block starting with "-- name: <name>" is one script; "prelude" is
-- put in front of every other block, without the helper functions that block does not call (Lua
-- would create them on every call). The layout of the keys is in docs/brokers/redis.md.
--
-- Every script gets KEYS = {keymap, base_1, ..., base_k} where base_i is "{prefix:queue_i}" (the hash
-- tag of one queue: every key of that queue starts with it) and ARGV = {prefix, now, queue_1, ...,
-- queue_k, ...}. Times come from the caller (its clock, not Redis TIME) as exact decimal strings and
-- are stored as given. Writes to sorted sets, counters and the change feed are buffered and done in a few
-- large calls at the end (flush), which is where the speed of batches comes from.

-- name: prelude
local KEYMAP = KEYS[1]
local PREFIX = ARGV[1]
local NOW = ARGV[2]
local now = tonumber(NOW)
local NQ = #KEYS - 1
local WAKE = 16

local function base_of(i) return KEYS[1 + i] end
local function queue_of(i) return ARGV[2 + i] end
local QUEUE = {}
for i = 1, NQ do QUEUE[KEYS[1 + i]] = ARGV[2 + i] end

local ZADDS, ZREMS, RPUSHES, LPUSHES, COUNTS, EVENTS, WAKES, PRIOS = {}, {}, {}, {}, {}, {}, {}, {}
local GONE = {}  -- base -> the tasks of the jobs deleted, in the order of EVENTS[base].deleted
local DONE = {}  -- '<base>:done:<second>' -> ids finished (succeeded or cancelled) in that second
local DONE_LAST = {}  -- base -> {second, its DONE list}: most finish in the same second as the last

-- A permanent member of every lease set, scored +inf (never expires, never a job). Being longer than
-- zset-max-listpack-value (64 bytes) it makes Redis create the set as a skiplist, and being permanent
-- it keeps the set from being deleted when empty; in the compact listpack encoding, each of a fetch's
-- 128 inserts scans the whole set (measured: 210 us per fetch of 128, 45 us as a skiplist).
local LEASE_SENTINEL = '~lease-set-sentinel: keeps this sorted set in skiplist encoding, not a job id'
-- ids of the lease set with a deadline before ``before`` ('+inf': all of them; never the sentinel)
local function leased_before(base, before, max)
  if max then return redis.call('ZRANGEBYSCORE', base .. ':leases', '-inf', '(' .. before, 'LIMIT', 0, max) end
  return redis.call('ZRANGEBYSCORE', base .. ':leases', '-inf', '(' .. before)
end

local function push(t, key, value)
  local list = t[key]
  if not list then list = {}; t[key] = list end
  list[#list + 1] = value
end
local function zadd(key, score, member)
  local list = ZADDS[key]
  if not list then list = {}; ZADDS[key] = list end
  local n = #list
  list[n + 1] = score; list[n + 2] = member
end
local function zrem(key, member) push(ZREMS, key, member) end

-- the retention index: ids of succeeded and cancelled jobs in lists per second of finished_at,
-- the seconds in a sorted set; prune reads them oldest first (stale entries are skipped there)
local function finished(base, at, id)
  local s = math.floor(tonumber(at))
  local last = DONE_LAST[base]
  local list
  if last and last[1] == s then
    list = last[2]
  else
    local second = string.format('%d', s)
    local key = base .. ':done:' .. second
    list = DONE[key]
    if not list then
      list = {}
      DONE[key] = list
      zadd(base .. ':done', second, second)
    end
    DONE_LAST[base] = {s, list}
  end
  list[#list + 1] = id
end

-- a job ended (or was deleted): wake whoever waits for it in Job.result (RedisBroker.wait_for), one
-- token per waiter; the waiters of a queue are counted per job id in <base>:waiters
local WATCHED = {}  -- base -> whether anyone waits for a job of that queue (read once per script)
local function notify(base, id)
  local watched = WATCHED[base]
  if watched == nil then
    watched = redis.call('EXISTS', base .. ':waiters') == 1
    WATCHED[base] = watched
  end
  if not watched then return end
  local n = tonumber(redis.call('HGET', base .. ':waiters', id))
  if not n then return end
  redis.call('HDEL', base .. ':waiters', id)
  if n > 0 then
    local tokens = {}
    for i = 1, math.min(n, 100) do tokens[i] = '1' end
    redis.call('RPUSH', base .. ':w:' .. id, unpack(tokens))
    redis.call('EXPIRE', base .. ':w:' .. id, 60)  -- tokens of waiters that gave up meanwhile
  end
end

-- a job changed state: counters per queue and state, the event, the state indexes (failed and
-- cancelled jobs are listed from their own index), the retention index (finished_at of succeeded
-- and cancelled jobs) and the unique key (free again once the job ends)
local function moved(base, id, old, new, done, key)
  local c = COUNTS[base]
  if not c then c = {}; COUNTS[base] = c end
  if old then c[old] = (c[old] or 0) - 1 end
  if new then c[new] = (c[new] or 0) + 1 end
  local e = EVENTS[base]
  if not e then e = {}; EVENTS[base] = e end
  local ids = e[new or 'deleted']
  if not ids then ids = {}; e[new or 'deleted'] = ids end
  ids[#ids + 1] = id
  if old == 'failed' or old == 'cancelled' then zrem(base .. ':s:' .. old, id) end
  if new == 'failed' or new == 'cancelled' then zadd(base .. ':s:' .. new, 0, id) end
  if new == 'succeeded' or new == 'cancelled' then finished(base, done, id) end
  if new == nil or new == 'succeeded' or new == 'failed' or new == 'cancelled' then notify(base, id) end
  if key and (new == 'succeeded' or new == 'failed' or new == 'cancelled' or new == nil) then
    if redis.call('HGET', KEYMAP, key) == id then redis.call('HDEL', KEYMAP, key) end
  end
end

-- put a job (back) in the ready list of its priority: RPUSH for new jobs (FIFO), LPUSH for jobs
-- coming back (they keep their place near the front, as an older job would)
local function ready(base, id, p, front)
  local list = base .. ':ready:' .. p
  if front then push(LPUSHES, list, id) else push(RPUSHES, list, id) end
  PRIOS[list] = p
  WAKES[base] = (WAKES[base] or 0) + 1
end

-- the fixed part of a job, field m: a JSON array [task, priority, max_attempts, timeout, created_at,
-- enqueued_at], a newline, the payload. Only the rare paths (lost leases, re-queueing) read it.
local function header(jk)
  local m = redis.call('HGET', jk, 'm')
  local nl = m and string.find(m, '\n', 1, true)
  if not nl then return {} end
  local ok, h = pcall(cjson.decode, string.sub(m, 1, nl - 1))
  if not ok or type(h) ~= 'table' then return {} end
  return h
end
local function priority_of(h)
  local p = tonumber(h[2])
  if not p then return '0' end
  return string.format('%d', p)
end

local function append_history(jk, entry)
  local h = redis.call('HGET', jk, 'history')
  if not h or h == '' or h == '[]' then
    h = '[' .. entry .. ']'
  else
    h = string.sub(h, 1, -2) .. ',' .. entry .. ']'
  end
  return h
end

local function chunked(cmd, key, t, step)
  local n = #t
  for i = 1, n, step do redis.call(cmd, key, unpack(t, i, math.min(i + step - 1, n))) end
end

-- pushes a buffered list; a ready list that was empty joins its queue's priorities (a list with
-- entries always has its priority listed: fetch drops the priority only when the list is gone)
local function push_list(cmd, key, t)
  local n = #t
  local len = 0
  for i = 1, n, 4000 do len = redis.call(cmd, key, unpack(t, i, math.min(i + 3999, n))) end
  local p = PRIOS[key]
  if p and len == n then
    redis.call('ZADD', string.sub(key, 1, #key - #p - 7) .. ':prios', -tonumber(p), p)  -- key is <base>:ready:<p>
  end
end

-- The change feed, read by RedisBroker.changes: a Stream capped near FEED_KEEP entries of at most
-- FEED_IDS jobs each (so at most some 25 MB), one entry per script, queue and state (q queue, s
-- state or 'deleted', t time, i ids as JSON, x what else changed: started, cancel_requested or
-- progress, k the tasks of deleted jobs as JSON). One Stream per server; on a cluster (where the
-- keymap is the queue's own) one per queue, as a script only reaches its queue's slot.
local FEED_KEEP = '5000'
local FEED_IDS = 128
local FEED_ORDER = {'scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'deleted'}
local function feed(base, state, ids, extra, tasks)
  local key = PREFIX .. ':feed'
  if KEYMAP ~= PREFIX .. ':keys' then key = base .. ':feed' end
  local n = #ids
  for i = 1, n, FEED_IDS do
    local last = math.min(i + FEED_IDS - 1, n)
    local part = ids
    if i > 1 or last < n then part = {unpack(ids, i, last)} end
    local f = {'q', QUEUE[base] or base, 's', state, 't', NOW, 'i', cjson.encode(part)}
    if extra then f[#f + 1] = 'x'; f[#f + 1] = extra end
    if tasks then f[#f + 1] = 'k'; f[#f + 1] = cjson.encode({unpack(tasks, i, last)}) end
    redis.call('XADD', key, 'MAXLEN', '~', FEED_KEEP, '*', unpack(f))
  end
end

local function flush()
  for key, t in pairs(ZREMS) do chunked('ZREM', key, t, 4000) end
  for key, t in pairs(ZADDS) do chunked('ZADD', key, t, 4000) end
  for key, t in pairs(RPUSHES) do push_list('RPUSH', key, t) end
  for key, t in pairs(DONE) do chunked('RPUSH', key, t, 4000) end
  for key, t in pairs(LPUSHES) do
    -- LPUSH a b c leaves c first: push reversed so the list starts in the order given
    local r, n = {}, #t
    for i = 1, n do r[i] = t[n + 1 - i] end
    push_list('LPUSH', key, r)
  end
  for base, c in pairs(COUNTS) do
    for state, d in pairs(c) do
      if d ~= 0 then redis.call('HINCRBY', base .. ':counts', state, d) end
    end
  end
  for base, n in pairs(WAKES) do
    local tokens = {}
    for i = 1, math.min(n, WAKE) do tokens[i] = '1' end
    if redis.call('RPUSH', base .. ':wake', unpack(tokens)) > WAKE then
      redis.call('LTRIM', base .. ':wake', 0, WAKE - 1)
    end
  end
  -- in the order of a job's life: a job promoted then fetched by one script ends up running
  for base, e in pairs(EVENTS) do
    for _, state in ipairs(FEED_ORDER) do
      local ids = e[state]
      if ids then
        local tasks = nil
        if state == 'deleted' then tasks = GONE[base] end
        feed(base, state, ids, nil, tasks)
      end
    end
  end
end

-- due scheduled jobs of one queue to its ready lists, oldest id first (the enqueue order)
local function promote(base, max)
  local due = redis.call('ZRANGEBYSCORE', base .. ':schedule', '-inf', NOW, 'LIMIT', 0, max)
  if #due == 0 then return 0 end
  redis.call('ZREM', base .. ':schedule', unpack(due))
  table.sort(due)
  local pushed = {}
  for _, id in ipairs(due) do
    local jk = base .. ':j:' .. id
    if redis.call('HGET', jk, 'state') == 'scheduled' then
      redis.call('HSET', jk, 'state', 'queued', 'updated_at', NOW)
      moved(base, id, 'scheduled', 'queued')
      local p = priority_of(header(jk))
      local list = pushed[p]
      if not list then list = {}; pushed[p] = list end
      list[#list + 1] = id
    end
  end
  -- pushed now (not at flush): a fetch in the same script must see them
  for p, ids in pairs(pushed) do
    local r, n = {}, #ids
    for i = 1, n do r[i] = ids[n + 1 - i] end
    chunked('LPUSH', base .. ':ready:' .. p, r, 4000)
    redis.call('ZADD', base .. ':prios', -tonumber(p), p)
    WAKES[base] = (WAKES[base] or 0) + n
  end
  return #due
end

-- ids enqueued since the last call join the list index (kept out of enqueue to keep it short)
local function index(base, max)
  local fresh = base .. ':fresh'
  local ids = redis.call('LRANGE', fresh, 0, max - 1)
  local n = #ids
  if n == 0 then return 0 end
  redis.call('LTRIM', fresh, n, -1)
  local z = {}
  for i = 1, n do z[2 * i - 1] = 0; z[2 * i] = ids[i] end
  chunked('ZADD', base .. ':ids', z, 4000)
  return n
end

-- a running job whose consumer is gone: back to the queue, failed when out of attempts, cancelled
-- when its cancellation was requested (it must not run again)
local function lose(base, id, err)
  local jk = base .. ':j:' .. id
  zrem(base .. ':leases', id)
  local v = redis.call('HMGET', jk, 'state', 'attempts', 'cancel_requested', 'key')
  if v[1] ~= 'running' then return 0 end
  local h = header(jk)
  local attempts = tonumber(v[2]) or 0
  local history = append_history(jk,
    '{"attempt":' .. attempts .. ',"at":' .. NOW .. ',"state":"lost","error":' .. err .. '}')
  if v[3] == '1' then
    redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', NOW, 'updated_at', NOW, 'lease_until', '',
      'consumer', '', 'history', history)
    moved(base, id, 'running', 'cancelled', NOW, v[4])
  elseif attempts >= (tonumber(h[3]) or 1) then
    redis.call('HSET', jk, 'state', 'failed', 'error', err, 'finished_at', NOW, 'updated_at', NOW,
      'lease_until', '', 'consumer', '', 'history', history)
    moved(base, id, 'running', 'failed', NOW, v[4])
  else
    redis.call('HSET', jk, 'state', 'queued', 'run_at', NOW, 'updated_at', NOW, 'finished_at', '',
      'lease_until', '', 'consumer', '', 'history', history)
    moved(base, id, 'running', 'queued')
    ready(base, id, priority_of(h), true)
  end
  return 1
end

-- remove a job that is not running from every structure of its queue (its task goes in the feed)
local function remove(base, id)
  local jk = base .. ':j:' .. id
  local v = redis.call('HMGET', jk, 'state', 'key')
  if not v[1] or v[1] == 'running' then return 0 end
  push(GONE, base, header(jk)[1] or '')
  redis.call('DEL', jk)
  zrem(base .. ':ids', id)
  if v[1] == 'scheduled' then zrem(base .. ':schedule', id) end
  moved(base, id, v[1], nil, nil, v[2])
  return 1
end

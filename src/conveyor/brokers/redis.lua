-- Atomic operations of the Redis broker. Each block starting with "-- name: <name>" is one script;
-- "prelude" is put in front of every other block, without the helper functions that block does not
-- call (Lua would create them on every call). The layout of the keys is in docs/brokers/redis.md.
--
-- Every script gets KEYS = {keymap, base_1, ..., base_k} where base_i is "{prefix:queue_i}" (the hash
-- tag of one queue: every key of that queue starts with it) and ARGV = {prefix, now, queue_1, ...,
-- queue_k, ...}. Times come from the caller (its clock, not Redis TIME) as exact decimal strings and
-- are stored as given. Writes to sorted sets, counters and events are buffered and done in a few
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
  local channel = PREFIX .. ':events'
  for base, e in pairs(EVENTS) do
    local q = cjson.encode(QUEUE[base] or base)
    for state, ids in pairs(e) do
      redis.call('PUBLISH', channel,
        '{"queue":' .. q .. ',"state":"' .. state .. '","at":' .. NOW .. ',"ids":' .. cjson.encode(ids) .. '}')
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

-- remove a job that is not running from every structure of its queue
local function remove(base, id)
  local jk = base .. ':j:' .. id
  local v = redis.call('HMGET', jk, 'state', 'key')
  if not v[1] or v[1] == 'running' then return 0 end
  redis.call('DEL', jk)
  zrem(base .. ':ids', id)
  if v[1] == 'scheduled' then zrem(base .. ':schedule', id) end
  moved(base, id, v[1], nil, nil, v[2])
  return 1
end

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
redis.call('PUBLISH', ARGV[1] .. ':events',
  '{"queue":' .. cjson.encode(ARGV[3]) .. ',"state":"queued","at":' .. ARGV[2] .. ',"ids":' .. cjson.encode({id}) .. '}')
return {}

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
-- running under that token began, and publishes them (state running, started).
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
  redis.call('PUBLISH', PREFIX .. ':events', '{"queue":' .. cjson.encode(QUEUE[base]) ..
    ',"state":"running","started":true,"at":' .. NOW .. ',"ids":' .. cjson.encode(ids) .. '}')
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
return 1

-- name: watch
-- ARGV after the queue: id, then '1' (a waiter comes: counted unless the job has ended; returns the
-- job's state, '' when there is none) or '-1' (a waiter leaves without having been woken).
local base = base_of(1)
local id = ARGV[4]
if ARGV[5] == '1' then
  local state = redis.call('HGET', base .. ':j:' .. id, 'state')
  if not state then return '' end
  if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
    redis.call('HINCRBY', base .. ':waiters', id, 1)
  end
  return state
end
if redis.call('HINCRBY', base .. ':waiters', id, -1) <= 0 then redis.call('HDEL', base .. ':waiters', id) end
return ''

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
  -- the event tells watchers that a cancellation is pending
  redis.call('PUBLISH', PREFIX .. ':events', '{"queue":' .. cjson.encode(queue_of(1)) ..
    ',"state":"running","cancel_requested":true,"at":' .. NOW .. ',"ids":' .. cjson.encode({id}) .. '}')
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

-- The change feed's reader (the writers are the prelude's feed() and enqueue_one). The feed is a
-- Stream capped near FEED_KEEP entries: one per server, or one per queue and one for queue and worker
-- changes on a cluster; RedisBroker.changes reads each with this script.

-- name: feed
-- standalone (no prelude: it reads one Stream, not a queue)
-- KEYS: the Stream. ARGV: after (an entry id, '' for none), how many entries at most. Returns
-- {'reset' or '', the newest entry id ('0-0' for none), the entries after `after` as XRANGE gives
-- them}: 'reset' when `after` is newer than the Stream (another server, or the Stream was deleted)
-- or older than the oldest entry the Stream kept, so the reader cannot tell what it missed.
local key, after, n = KEYS[1], ARGV[1], tonumber(ARGV[2])
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function before(a, b)  -- whether entry id a comes before b
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end
if redis.call('EXISTS', key) == 0 then
  if after ~= '' and after ~= '0-0' then return {'reset', '0-0'} end
  return {'', '0-0'}
end
local info = redis.call('XINFO', 'STREAM', key)
local last, first, added, length = '0-0', nil, nil, 0
for i = 1, #info, 2 do
  local name = info[i]
  if name == 'last-generated-id' then last = info[i + 1]
  elseif name == 'length' then length = info[i + 1]
  elseif name == 'entries-added' then added = info[i + 1]
  elseif name == 'first-entry' and type(info[i + 1]) == 'table' then first = info[i + 1][1]
  end
end
if after == '' then return {'', last} end
local at = parse(after)
if before(parse(last), at) then return {'reset', last} end
-- Trimming leaves no mark but the count of entries ever added (Redis 7; on 6.2 it is assumed): then
-- whatever came before the oldest entry kept may be lost.
if first and (not added or added > length) and before(at, parse(first)) then return {'reset', last} end
return {'', last, redis.call('XRANGE', key, '(' .. after, '+', 'COUNT', n)}

-- INGEST: add payloads of one shard, received in window k, to the buffer.
--
-- KEYS[1] - the shard's window index (zset of window indexes with live data)
-- KEYS[2] - the window's ident list
-- KEYS[3] - session memory of window k
-- KEYS[4] - session memory of window k-1
-- KEYS[5] - session memory of window k-2
-- KEYS[5+i] - the counter hash of payload i (i = 1..N)
-- ARGV[1] - window index k
-- ARGV[2] - TTL of KEYS[3] in seconds
-- ARGV[3] - retry horizon in windows, 0..2 (0: no retry memory)
-- ARGV[4] - most bytes of durations a session remembers per window
-- ARGV[5+8(i-1) ..] - payload i: ident, session key, cdn, p2p, watch, short, zero, duration
--   session key - digest of (customer, content, token) (keys.session_key)
--   watch    - timespan, added to the watch time
--   short    - "1" if sessionDuration < window length, else "0"
--   zero     - "1" if cdn + p2p == 0, else "0"
--   duration - sessionDuration: with the session key, what identifies a retry
-- return - one character per payload, in order:
--   "c" counted, "s" counted and started a session, "d" a retry (counted nothing),
--   "u"/"U" counted (and "U": started a session) with no retry memory left for it
--
-- The rules are docs/sessions.md and docs/retries.md. The script cannot fail
-- half-way: it reads before it writes (so a Redis out of memory refuses the
-- call at its first write, before any), and a counter that would pass 2^63-1
-- continues in a spill field (c1, c2, ...) instead of failing (see
-- docs/stats-table.md, "Counter bounds").
--
-- Session memory values: one state character ("1" seen, "2" session
-- started), then, while retries are remembered, the durations counted per
-- window: "2|5985624:,30000,60000,|5985625:,90000,". A payload whose duration
-- is listed within the horizon is a retry.
--
-- cdn, p2p and watch stay strings: HINCRBY adds them as 64-bit integers,
-- where a Lua number (a double) would round them.
local n = (#ARGV - 4) / 8
assert(#KEYS == 5 + n, 'INGEST: 5 keys plus one counter hash per payload')

local k = tonumber(ARGV[1])
local horizon = tonumber(ARGV[3])
local room = tonumber(ARGV[4])

-- The groups of a record inside the horizon ("|w:,d,d,|w:,d,"): a duration
-- counted longer ago is no longer a retry, and its bytes are dropped.
local function recent(groups)
  local stale = false
  for w in string.gmatch(groups, '|(%d+):') do
    if tonumber(w) < k - horizon then
      stale = true
    end
  end
  if not stale then
    return groups -- the usual case: nothing to rebuild
  end
  local kept = ''
  for w, list in string.gmatch(groups, '|(%d+):([^|]*)') do
    if tonumber(w) >= k - horizon then
      kept = kept .. '|' .. w .. ':' .. list
    end
  end
  return kept
end

-- The groups plus this duration, or nil when this window's list is full: a
-- session flooding one window cannot push older durations out (that would
-- let a real retry of them count again).
local function remember(groups, duration)
  local head, w, list = string.match(groups, '^(.-)|(%d+):([^|]*)$')
  if w ~= ARGV[1] then
    return groups .. '|' .. ARGV[1] .. ':,' .. duration .. ','
  end
  if #list + #duration + 1 > room then
    return nil
  end
  return head .. '|' .. w .. ':' .. list .. duration .. ','
end

-- HINCRBY, continuing in spill fields when the counter would overflow.
local function add(hash, field, delta)
  if delta == '0' then
    return
  end
  local spill = 0
  local done = redis.pcall('HINCRBY', hash, field, delta)
  while type(done) == 'table' and done.err do
    if not string.find(done.err, 'overflow', 1, true) or spill >= 1000 then
      error(done) -- out of memory (before any write) or a damaged key
    end
    spill = spill + 1
    done = redis.pcall('HINCRBY', hash, field .. spill, delta)
  end
end

-- Read and decide everything first.
local memory = {} -- session key -> {record, the window hash it was read from}
local plan = {}
for i = 1, n do
  local a = 5 + (i - 1) * 8
  local key, duration = ARGV[a + 1], ARGV[a + 7]
  local m = memory[key]
  if not m then
    local record = redis.call('HGET', KEYS[3], key)
    local from = 3
    if not record then
      record = redis.call('HGET', KEYS[4], key)
      from = 4
      if not record then
        record = redis.call('HGET', KEYS[5], key)
        from = 5
      end
      if not record then
        from = nil
      end
    end
    m = {record = record, from = from, changed = false}
    memory[key] = m
  end

  local state = m.record and string.sub(m.record, 1, 1)
  local groups = ''
  if horizon > 0 and m.record then
    groups = recent(string.sub(m.record, 2))
  end
  if horizon > 0 and string.find(groups, ',' .. duration .. ',', 1, true) then
    plan[i] = 'd'
    if m.from ~= 3 then
      m.changed = true -- renewed: moved into this window's memory
    end
  else
    local starts = ARGV[a + 5] == '1' and state ~= '2' and (not state or ARGV[a + 6] == '1')
    local new_state = '1'
    if starts or state == '2' then
      new_state = '2'
    end
    local outcome = starts and 's' or 'c'
    if horizon > 0 then
      local more = remember(groups, duration)
      if more then
        groups = more
      else
        outcome = starts and 'U' or 'u'
      end
    end
    local record = new_state .. groups
    if record ~= m.record then
      m.record = record
      m.changed = true
    end
    plan[i] = outcome
  end
end

-- Then write.
local added = 0
for key, m in pairs(memory) do
  if m.changed then
    redis.call('HSET', KEYS[3], key, m.record)
    if m.from ~= 3 then
      added = added + 1
    end
    -- Each session is held once, in the window of its latest payload, so it
    -- lives 2L past that payload.
    if m.from == 4 or m.from == 5 then
      redis.call('HDEL', KEYS[m.from], key)
    end
  end
end
for i = 1, n do
  local outcome = plan[i]
  if outcome ~= 'd' then
    local a = 5 + (i - 1) * 8
    local counters = KEYS[5 + i]
    add(counters, 'c', ARGV[a + 2])
    add(counters, 'p', ARGV[a + 3])
    add(counters, 'w', ARGV[a + 4])
    if outcome == 's' or outcome == 'U' then
      redis.call('HINCRBY', counters, 's', 1)
    end
    -- A counter hash just created is listed in the window's index, and the
    -- window's first one registers the window. FREEZE moves the index.
    if redis.call('HINCRBY', counters, 'n', 1) == 1 then
      if redis.call('RPUSH', KEYS[2], ARGV[a]) == 1 then
        redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
      end
    end
  end
end
-- The hash has its TTL unless a session was added to it just now.
if added > 0 then
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return table.concat(plan)

-- INGEST: add payloads received in one or more (window, shard) groups.
--
-- Group g (g = 1..G) is one window k_g of one shard; payload i belongs to one group.
-- KEYS[6(g-1)+1] - group g's shard window index (zset of window indexes with live data)
-- KEYS[6(g-1)+2] - group g's window ident list
-- KEYS[6(g-1)+3] - session memory of window k_g + 1 of the shard (a late payload may
--                  find its session moved on there; read only for a late group)
-- KEYS[6(g-1)+4] - session memory of window k_g
-- KEYS[6(g-1)+5] - session memory of window k_g - 1
-- KEYS[6(g-1)+6] - session memory of window k_g - 2
-- KEYS[6G+i] - the counter hash of payload i (i = 1..N)
-- ARGV[1] - retry horizon in windows, 0..2 (0: no retry memory)
-- ARGV[2] - most bytes of durations a session remembers per window
-- ARGV[3] - G, the number of groups
-- ARGV[4] - the window length L in seconds
-- ARGV[5+3(g-1)], ARGV[6+3(g-1)], ARGV[7+3(g-1)] - k_g, the TTL in seconds of window
--   k_g's session memory (window k_g + 1's lives L longer), and "1" when the group is
--   late (window k_g + 1 may have begun), else "0"
-- ARGV[5+3G+9(i-1) ..] - payload i: group, ident, session key, cdn, p2p, watch, short,
--   zero, duration
--   session key - digest of (customer, content, token) (keys.session_key)
--   watch    - timespan, added to the watch time
--   short    - "1" if sessionDuration < window length, else "0"
--   zero     - "1" if cdn + p2p == 0, else "0"
--   duration - sessionDuration: with the session key, what identifies a retry
-- return - one character per payload, in order:
--   "c" counted, "s" counted and started a session, "d" a retry (counted nothing),
--   "u"/"U" counted (and "U": started a session) with no retry memory left for it
--
-- On one Redis a call may hold several shards (it is atomic as a whole: many
-- requests share one round trip); on Redis Cluster every group of a call is
-- one shard, so all its keys share one hash tag.
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
local horizon = tonumber(ARGV[1])
local room = tonumber(ARGV[2])
local ngroups = tonumber(ARGV[3])
local length = tonumber(ARGV[4])
local first = 5 + 3 * ngroups -- ARGV index of the first payload
local n = (#ARGV - first + 1) / 9
assert(#KEYS == 6 * ngroups + n, 'INGEST: 6 keys per group plus one counter hash per payload')

-- Each session memory hash named in KEYS: its window and its TTL; and where a
-- group's sessions are looked for (the next window's memory only when late).
local window_of, ttl_of, lookup = {}, {}, {}
local ON_TIME, LATE = {4, 5, 6}, {4, 5, 6, 3}
for g = 1, ngroups do
  local k, ttl = tonumber(ARGV[2 + 3 * g]), tonumber(ARGV[3 + 3 * g])
  lookup[g] = ARGV[4 + 3 * g] == '1' and LATE or ON_TIME
  local base = 6 * (g - 1)
  window_of[base + 3], ttl_of[base + 3] = k + 1, ttl + length
  window_of[base + 4], ttl_of[base + 4] = k, ttl
  window_of[base + 5] = k - 1
  window_of[base + 6] = k - 2
end

-- The window lists of a record inside the horizon ("|w:,d,d,|w:,d,") seen
-- from window k: a duration counted longer ago is no longer a retry.
local function recent(groups, k)
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

-- The window lists plus this duration in window k (a string), or nil when
-- that window's list is full: a session flooding one window cannot push
-- older durations out (that would let a real retry of them count again).
local function remember(groups, k, duration)
  local head, w, list = string.match(groups, '^(.-)|(%d+):([^|]*)$')
  if w ~= k then
    return groups .. '|' .. k .. ':,' .. duration .. ','
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

-- Read and decide everything first. A session is read once, from the
-- memory of its group's window, the two before or the one after; it is
-- written back into the memory of the latest window it was seen in.
local memory = {} -- session key -> {record, from = KEYS index or nil, to = KEYS index}
local plan = {}
for i = 1, n do
  local a = first + (i - 1) * 9
  local g = tonumber(ARGV[a])
  local base = 6 * (g - 1)
  local k = ARGV[2 + 3 * g]
  local key, duration = ARGV[a + 2], ARGV[a + 8]
  local m = memory[key]
  if not m then
    local from = nil
    local record
    for _, j in ipairs(lookup[g]) do
      record = redis.call('HGET', KEYS[base + j], key)
      if record then
        from = base + j
        break
      end
    end
    m = {record = record, from = from, to = from or base + 4, changed = false}
    memory[key] = m
  end
  if window_of[base + 4] > window_of[m.to] then
    m.to = base + 4
  end

  local state = m.record and string.sub(m.record, 1, 1)
  local groups = ''
  if horizon > 0 and m.record then
    groups = recent(string.sub(m.record, 2), tonumber(k))
  end
  if horizon > 0 and string.find(groups, ',' .. duration .. ',', 1, true) then
    plan[i] = 'd'
    if m.from ~= m.to then
      m.changed = true -- renewed: moved into this window's memory
    end
  else
    local starts = ARGV[a + 6] == '1' and state ~= '2' and (not state or ARGV[a + 7] == '1')
    local new_state = '1'
    if starts or state == '2' then
      new_state = '2'
    end
    local outcome = starts and 's' or 'c'
    if horizon > 0 then
      local more = remember(groups, k, duration)
      if more then
        groups = more
      else
        outcome = starts and 'U' or 'u'
      end
    end
    local record = new_state .. groups
    if record ~= m.record or m.from ~= m.to then
      m.record = record
      m.changed = true
    end
    plan[i] = outcome
  end
end

-- Then write.
local added = {} -- KEYS index of a session memory -> true when a session moved in
for key, m in pairs(memory) do
  if m.changed then
    redis.call('HSET', KEYS[m.to], key, m.record)
    -- Each session is held once, in the window of its latest payload, so it
    -- lives 2L past that payload.
    if m.from ~= m.to then
      added[m.to] = true
      if m.from then
        redis.call('HDEL', KEYS[m.from], key)
      end
    end
  end
end
for i = 1, n do
  local outcome = plan[i]
  if outcome ~= 'd' then
    local a = first + (i - 1) * 9
    local g = tonumber(ARGV[a])
    local base = 6 * (g - 1)
    local counters = KEYS[6 * ngroups + i]
    add(counters, 'c', ARGV[a + 3])
    add(counters, 'p', ARGV[a + 4])
    add(counters, 'w', ARGV[a + 5])
    if outcome == 's' or outcome == 'U' then
      redis.call('HINCRBY', counters, 's', 1)
    end
    -- A counter hash just created is listed in the window's index, and the
    -- window's first one registers the window. FREEZE moves the index.
    if redis.call('HINCRBY', counters, 'n', 1) == 1 then
      if redis.call('RPUSH', KEYS[base + 2], ARGV[a + 1]) == 1 then
        local k = ARGV[2 + 3 * g]
        redis.call('ZADD', KEYS[base + 1], k, k)
      end
    end
  end
end
-- A memory hash has its TTL unless a session was added to it just now.
for index in pairs(added) do
  redis.call('EXPIRE', KEYS[index], ttl_of[index])
end
return table.concat(plan)

-- INGEST: add the payloads of one shard, received in window k, to the buffer.
--
-- KEYS[1] - the shard's window index (zset of window indexes with live data)
-- KEYS[2] - the window's ident list
-- KEYS[3] - token memory of window k
-- KEYS[4] - token memory of window k-1
-- KEYS[5] - token memory of window k-2
-- KEYS[5+i] - the counter hash of payload i (i = 1..N)
-- ARGV[1] - window index k
-- ARGV[2] - TTL of KEYS[3] in seconds
-- ARGV[3] - de-duplication horizon in windows, 0..2 (0: off)
-- ARGV[4+7(i-1) ..] - payload i: ident, token key, cdn, p2p, short, zero, duration
--   token key - 12-byte digest of the token (keys.token_key)
--   short    - "1" if sessionDuration < window length, else "0"
--   zero     - "1" if cdn + p2p == 0, else "0"
--   duration - sessionDuration, the retry key with the token
-- return - {sessions started, duplicates skipped}
--
-- The rules applied here are docs/sessions.md and docs/retries.md.
--
-- Token memory values: one state character ("1" seen, "2" session started),
-- then, with de-duplication on, the sessionDurations accepted per window:
-- "2|5985624:,30000,60000,|5985625:,90000,". A payload whose duration is
-- listed is a retry: it is answered but counts nothing.
--
-- cdn and p2p stay strings: HINCRBY adds them as 64-bit integers, where a Lua
-- number (a double) would round large sums and print 1e+12 as "1e+12".
local n = (#ARGV - 3) / 7
assert(#KEYS == 5 + n, 'INGEST: 5 keys plus one counter hash per payload')

local k = tonumber(ARGV[1])
local horizon = tonumber(ARGV[3])

-- The groups of a record inside the horizon ("|w:,d,d,|w:,d,"): a duration
-- accepted longer ago is no longer a retry, and its bytes are dropped.
local function recent(groups)
  local stale = false
  for w in string.gmatch(groups, '|(%d+):') do
    if tonumber(w) < k - horizon then
      stale = true
    end
  end
  if not stale then
    return groups  -- the usual case: nothing to rebuild
  end
  local kept = ''
  for w, list in string.gmatch(groups, '|(%d+):([^|]*)') do
    if tonumber(w) >= k - horizon then
      kept = kept .. '|' .. w .. ':' .. list
    end
  end
  return kept
end

-- The groups plus this duration. The current window's list keeps only its
-- last 600 bytes (some 70 durations, 7 times what a device sends in a
-- 5-minute window), so a token flooding one window costs bounded time.
local function remember(groups, duration)
  local head, w, list = string.match(groups, '^(.-)|(%d+):([^|]*)$')
  if w ~= ARGV[1] then
    return groups .. '|' .. ARGV[1] .. ':,' .. duration .. ','
  end
  list = list .. duration .. ','
  if #list > 600 then
    list = string.sub(list, string.find(list, ',', #list - 600, true))
  end
  return head .. '|' .. w .. ':' .. list
end

local started, duplicates, counted, new_tokens = 0, 0, 0, 0
for i = 0, n - 1 do
  local a = 4 + i * 7
  local ident, token, cdn, p2p = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local short, zero, duration = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local counters = KEYS[6 + i]

  local record = redis.call('HGET', KEYS[3], token)
  local here = record
  if not record then
    -- Remembered in an earlier window: move the memory to this one, so each
    -- token is held once and lives 2L past its latest payload.
    record = redis.call('HGET', KEYS[4], token)
    if record then
      redis.call('HDEL', KEYS[4], token)
    else
      record = redis.call('HGET', KEYS[5], token)
      if record then
        redis.call('HDEL', KEYS[5], token)
      end
    end
  end
  if not here then
    new_tokens = new_tokens + 1
  end
  local state = record and string.sub(record, 1, 1)
  local groups = ''
  if horizon > 0 and record then
    groups = recent(string.sub(record, 2))
  end

  if horizon > 0 and string.find(groups, ',' .. duration .. ',', 1, true) then
    duplicates = duplicates + 1
    if not here then
      redis.call('HSET', KEYS[3], token, state .. groups)
    end
  else
    local starts = short == '1' and state ~= '2' and (not state or zero == '1')
    local new_record = '1'
    if starts or state == '2' then
      new_record = '2'
    end
    if horizon > 0 then
      new_record = new_record .. remember(groups, duration)
    end
    if here ~= new_record then
      redis.call('HSET', KEYS[3], token, new_record)
    end

    if cdn ~= '0' then
      redis.call('HINCRBY', counters, 'c', cdn)
    end
    if p2p ~= '0' then
      redis.call('HINCRBY', counters, 'p', p2p)
    end
    if starts then
      redis.call('HINCRBY', counters, 's', 1)
      started = started + 1
    end
    -- A counter hash just created is listed in the window's index, and the
    -- window's first one registers the window. FREEZE moves the index.
    if redis.call('HINCRBY', counters, 'n', 1) == 1 then
      if redis.call('RPUSH', KEYS[2], ident) == 1 then
        redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
      end
    end
    counted = counted + 1
  end
end
-- The hash has its TTL unless a token was added to it just now.
if new_tokens > 0 then
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return {started, duplicates}

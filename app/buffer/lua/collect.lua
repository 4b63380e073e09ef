-- COLLECT: move a batch of a snapshot's counter hashes into it and read them.
--
-- KEYS[1..N] - live counter hashes of the batch's idents
-- KEYS[N+1..2N] - the snapshot's counter hashes of the same idents, same order
-- ARGV[1] - N
-- return - for each ident, in order: {cdn, p2p, sessions, payloads, watch_ms}
--   (a field never written is nil; payloads nil: the ident has no counters),
--   or, when the hash has other fields too (a counter went on in spill
--   fields, or the hash was damaged), {"*", field, value, ...}: all of it
--
-- A hash already in the snapshot stays as it is: a live hash of the same
-- ident is then a newer one, listed in a newer ident list. So running this
-- twice on a batch (a flusher re-driving another's snapshot) moves nothing
-- twice and reads the same values.
local n = tonumber(ARGV[1])
assert(#KEYS == 2 * n, 'COLLECT: a live and a snapshot key per ident')

local out = {}
for i = 1, n do
  local frozen = KEYS[n + i]
  -- RENAMENX: never over a hash already moved; an error when there is no live
  -- hash (already moved, or never there), which is no error here.
  redis.pcall('RENAMENX', KEYS[i], frozen)
  local v = redis.call('HMGET', frozen, 'c', 'p', 's', 'n', 'w')
  local found = 0
  for j = 1, 5 do
    if v[j] then
      found = found + 1
    end
  end
  if redis.call('HLEN', frozen) > found then
    local all = redis.call('HGETALL', frozen)
    table.insert(all, 1, '*')
    v = all
  end
  out[i] = v
end
return out

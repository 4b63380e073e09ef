-- COLLECT: move a batch of a snapshot's counter hashes into it and read them.
--
-- KEYS[1..N] - live counter hashes of the batch's idents
-- KEYS[N+1..2N] - the snapshot's counter hashes of the same idents, same order
-- ARGV[1] - N
-- return - for each ident, in order, the snapshot hash as a flat
--   {field, value, ...} list (HGETALL; empty if the ident has no counters)
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
  if redis.call('EXISTS', frozen) == 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], frozen)
  end
  out[i] = redis.call('HGETALL', frozen)
end
return out

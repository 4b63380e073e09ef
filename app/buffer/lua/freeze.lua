-- FREEZE: start a snapshot of one closed window of one shard.
--
-- KEYS[1] - the shard's window index (zset of window indexes with live data)
-- KEYS[2] - the window's live ident list
-- KEYS[3] - the shard's pending-snapshot hash
-- KEYS[4] - the snapshot's ident list
-- ARGV[1] - window index k
-- ARGV[2] - the snapshot's field in KEYS[3] ("FLUSHID:k")
-- return - the number of idents in the snapshot (0: nothing to freeze)
--
-- Only the ident list moves here; COLLECT then moves each listed counter
-- hash into the snapshot. A payload arriving in between either adds to a
-- live hash still listed (and moves with it) or, once that hash has moved,
-- creates a fresh one, listed in a fresh live ident list that a later flush
-- freezes. Every payload is in exactly one place (docs/exactly-once.md).
assert(#KEYS == 4, 'FREEZE: 4 keys')

local frozen = redis.call('LLEN', KEYS[2])
-- RENAME first: it is not refused when Redis is out of memory, and once a
-- script has written, Redis lets it finish (the flush is what frees memory).
if frozen > 0 then
  redis.call('RENAME', KEYS[2], KEYS[4])
end
redis.call('ZREM', KEYS[1], ARGV[1])
if frozen > 0 then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
end
return frozen

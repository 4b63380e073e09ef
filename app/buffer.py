"""The Redis window buffer: the Lua scripts and the calls that run them.

Ingest adds payloads to live counter hashes with one script call per shard.
The flusher freezes a closed window into a snapshot (one script call per
shard), reads the snapshot in batches, and deletes it only after PostgreSQL
has committed it (see ``app.flush``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from . import keys as k_
from .config import Config
from .keys import Keys
from .windows import token_memory_ttl, window_index

# KEYS[1] - the shard's window index (zset of window indexes with live data)
# KEYS[2] - the window's ident list
# KEYS[3] - token memory of window k
# KEYS[4] - token memory of window k-1
# KEYS[5] - token memory of window k-2
# KEYS[5+i] - the counter hash of payload i (i = 1..N)
# ARGV[1] - window index k
# ARGV[2] - TTL of KEYS[3] in seconds
# ARGV[3] - de-duplication horizon in windows, 0..2 (0: off)
# ARGV[4+7(i-1) ..] - payload i: ident, token key, cdn, p2p, short, zero, duration
#   token key - 12-byte digest of the token (keys.token_key)
#   short    - "1" if sessionDuration < window length, else "0"
#   zero     - "1" if cdn + p2p == 0, else "0"
#   duration - sessionDuration, the retry key with the token
# return - {sessions started, duplicates skipped}
#
# Token memory values: one state character ("1" seen, "2" session started),
# then, with de-duplication on, the sessionDurations accepted per window:
# "2|5985624:,30000,60000,|5985625:,90000,". A payload whose duration is
# listed is a retry: it is answered but counts nothing.
#
# cdn and p2p stay strings: HINCRBY adds them as 64-bit integers, where a Lua
# number (a double) would round large sums and print 1e+12 as "1e+12".
INGEST = """
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
local n = (#ARGV - 3) / 7
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
    -- window's first one registers the window. FREEZE renames the index and
    -- the hashes together.
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
"""

# KEYS[1] - the shard's window index
# KEYS[2] - the window's live ident list
# KEYS[3] - the shard's pending-snapshot hash
# KEYS[4] - the snapshot's ident list
# ARGV[1] - window index k
# ARGV[2] - the snapshot's field in KEYS[3] ("FLUSHID:k")
# ARGV[3] - key prefix of the window's live counter hashes
# ARGV[4] - key prefix of the snapshot's counter hashes
# return - the number of counter hashes frozen (0: nothing to freeze)
#
# Payloads that arrive after this runs create fresh live keys and a fresh
# index, which a later flush picks up. Every RENAME acts on a key checked to
# exist, so the script cannot stop half-way.
FREEZE = """
local idents = redis.call('LRANGE', KEYS[2], 0, -1)
if #idents == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local frozen = 0
for _, ident in ipairs(idents) do
  if redis.call('EXISTS', ARGV[3] .. ident) == 1 then
    redis.call('RENAME', ARGV[3] .. ident, ARGV[4] .. ident)
    frozen = frozen + 1
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
if frozen == 0 then
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('RENAME', KEYS[2], KEYS[4])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return frozen
"""


# KEYS[1] - a snapshot's ident list
# ARGV[1], ARGV[2] - the first and last list index of this batch (LRANGE)
# ARGV[3] - key prefix of the snapshot's counter hashes
# return - flat: ident, cdn, p2p, sessions, payloads for each ident of the batch
#   (a counter is nil when absent); empty past the end of the list
#
# One call per batch instead of one HMGET each: the flush reads 100k keys in
# 100 round trips whose replies hiredis parses in bulk.
READ = """
local out = {}
for _, ident in ipairs(redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])) do
  local v = redis.call('HMGET', ARGV[3] .. ident, 'c', 'p', 's', 'n')
  local n = #out
  out[n + 1] = ident
  out[n + 2] = v[1]
  out[n + 3] = v[2]
  out[n + 4] = v[3]
  out[n + 5] = v[4]
end
return out
"""


# KEYS[1] - a snapshot's ident list
# ARGV[1], ARGV[2] - the first and last list index of this batch (LRANGE)
# ARGV[3] - key prefix of the snapshot's counter hashes
# return - the number of idents in the batch (0 past the end of the list)
DROP = """
local idents = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
for _, ident in ipairs(idents) do
  redis.call('UNLINK', ARGV[3] .. ident)
end
return #idents
"""


@dataclass(frozen=True, order=True)
class Snapshot:
    """One frozen window of one shard, named by the flush that froze it."""

    k: int
    shard: int
    flush_id: str

    @property
    def id(self) -> str:
        """Globally unique: the ledger's primary key in PostgreSQL."""
        return f"{self.flush_id}:{self.shard}:{self.k}"

    @property
    def field(self) -> str:
        """Its field in the shard's pending-snapshot hash."""
        return f"{self.flush_id}:{self.k}"

    @classmethod
    def from_field(cls, shard: int, field: bytes) -> Snapshot:
        flush_id, _, k = field.decode().rpartition(":")
        return cls(k=int(k), shard=shard, flush_id=flush_id)


@dataclass(frozen=True)
class Row:
    customer: str
    content: str
    cdn: int
    p2p: int
    sessions: int
    payloads: int


class Scripts:
    """The Lua scripts, registered once on one client (EVALSHA, EVAL on NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self.ingest = redis.register_script(INGEST)
        self.freeze = redis.register_script(FREEZE)
        self.read = redis.register_script(READ)
        self.drop = redis.register_script(DROP)


@dataclass(frozen=True)
class Recorded:
    """What one ``record`` call did."""

    accepted: int  # payloads counted
    duplicates: int  # retries of payloads already counted, skipped
    sessions: int  # sessions started


def record(
    redis: Redis,
    scripts: Scripts,
    config: Config,
    payloads: Sequence[Mapping[str, Any]],
    now: float,
) -> Recorded:
    """Add validated payloads received at ``now`` to their window.

    One script call per shard: a single payload is one round trip; a batch
    spanning shards is one MULTI/EXEC, so all of it lands or none does.
    Raises redis.RedisError if Redis fails.
    """
    keys = Keys(config.key_prefix)
    length = config.window_seconds
    k = window_index(now, length)
    head = [k, token_memory_ttl(k, now, length), config.dedup_windows]
    short_below = config.window_ms
    by_shard: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for p in payloads:
        by_shard[k_.shard_of(p["token"], config.shards)].append(p)

    calls = []
    for shard, items in by_shard.items():
        script_keys: list[Any] = [
            keys.windows(shard),
            keys.index(shard, k),
            keys.tokens(shard, k),
            keys.tokens(shard, k - 1),
            keys.tokens(shard, k - 2),
        ]
        args: list[Any] = list(head)
        for p in items:
            ident = k_.encode_ident(p["customer"], p["content"])
            script_keys.append(keys.counters(shard, k, ident))
            cdn, p2p, duration = p["cdn"], p["p2p"], p["sessionDuration"]
            args += (
                ident,
                k_.token_key(p["token"]),
                cdn,
                p2p,
                "1" if duration < short_below else "0",
                "1" if cdn + p2p == 0 else "0",
                duration,
            )
        calls.append((script_keys, args))

    if len(calls) == 1:
        results = [scripts.ingest(keys=calls[0][0], args=calls[0][1])]
    else:
        pipe = redis.pipeline(transaction=True)
        for script_keys, args in calls:
            scripts.ingest(keys=script_keys, args=args, client=pipe)
        results = pipe.execute()
    sessions = sum(int(r[0]) for r in results)
    duplicates = sum(int(r[1]) for r in results)
    return Recorded(len(payloads) - duplicates, duplicates, sessions)


def closed_windows(redis: Redis, config: Config, shard: int, last_closed: int) -> list[int]:
    """Window indexes of ``shard`` holding live data, up to ``last_closed``."""
    found = redis.zrangebyscore(Keys(config.key_prefix).windows(shard), "-inf", last_closed)
    return [int(k) for k in found]


def freeze(redis: Redis, scripts: Scripts, config: Config, snapshot: Snapshot) -> int:
    """Atomically move a window's live counters of one shard into ``snapshot``.

    Returns the number of counter hashes frozen; 0 means no snapshot was made.
    """
    keys = Keys(config.key_prefix)
    s, k, f = snapshot.shard, snapshot.k, snapshot.flush_id
    return int(
        scripts.freeze(
            keys=[
                keys.windows(s),
                keys.index(s, k),
                keys.snapshots(s),
                keys.snapshot_list(s, f, k),
            ],
            args=[
                k,
                snapshot.field,
                keys.counters_prefix(s, k),
                keys.snapshot_counters_prefix(s, f, k),
            ],
        )
    )


def buffered_windows(redis: Redis, config: Config) -> set[int]:
    """Indexes of every window with data in Redis: live or frozen, any shard."""
    keys = Keys(config.key_prefix)
    pipe = redis.pipeline(transaction=False)
    for shard in range(config.shards):
        pipe.zrange(keys.windows(shard), 0, -1)
        pipe.hvals(keys.snapshots(shard))
    return {int(k) for found in pipe.execute() for k in found}


def pending_snapshots(redis: Redis, config: Config) -> list[Snapshot]:
    """Every snapshot not yet released, in every shard (left by any flusher)."""
    keys = Keys(config.key_prefix)
    pipe = redis.pipeline(transaction=False)
    for shard in range(config.shards):
        pipe.hkeys(keys.snapshots(shard))
    found = []
    for shard, fields in enumerate(pipe.execute()):
        found += (Snapshot.from_field(shard, raw) for raw in fields)
    return sorted(found)


def read_snapshot(
    redis: Redis, config: Config, snapshot: Snapshot, scripts: Scripts | None = None
) -> Iterator[list[Row]]:
    """The snapshot's rows, in batches of at most ``config.flush_batch_size``."""
    scripts = scripts or Scripts(redis)
    keys = Keys(config.key_prefix)
    s, f, k = snapshot.shard, snapshot.flush_id, snapshot.k
    name = keys.snapshot_list(s, f, k)
    prefix = keys.snapshot_counters_prefix(s, f, k)
    size = config.flush_batch_size
    start = 0
    while True:
        flat = scripts.read(keys=[name], args=[start, start + size - 1, prefix])
        if not flat:
            return
        rows = []
        for i in range(0, len(flat), 5):
            ident, cdn, p2p, sessions, payloads = flat[i : i + 5]
            if payloads is None:  # listed, but its hash was gone when FREEZE ran
                continue
            customer, content = k_.decode_ident(ident)
            rows.append(Row(customer, content, int(cdn or 0), int(p2p or 0),
                            int(sessions or 0), int(payloads)))
        yield rows
        start += size


def release(
    redis: Redis, config: Config, snapshot: Snapshot, scripts: Scripts | None = None
) -> None:
    """Delete a snapshot. Only ever called once PostgreSQL holds it; idempotent."""
    scripts = scripts or Scripts(redis)
    keys = Keys(config.key_prefix)
    s, f, k = snapshot.shard, snapshot.flush_id, snapshot.k
    name = keys.snapshot_list(s, f, k)
    prefix = keys.snapshot_counters_prefix(s, f, k)
    size = config.flush_batch_size
    start = 0
    while scripts.drop(keys=[name], args=[start, start + size - 1, prefix]):
        start += size
    # The record goes last: while it exists, a crash here is re-driven.
    pipe = redis.pipeline(transaction=True)
    pipe.delete(name)
    pipe.hdel(keys.snapshots(s), snapshot.field)
    pipe.execute()

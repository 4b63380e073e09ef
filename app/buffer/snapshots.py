"""Flush reads: freezing a closed window into a snapshot, reading it, releasing it.

The flusher (``payload_stats.flush``) freezes a window of one shard with one
FREEZE call, then reads the snapshot in batches with COLLECT (which moves the
counter hashes into it), and deletes it only after PostgreSQL has committed
it (docs/exactly-once.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from redis import Redis

from ..config import Config
from . import counters
from . import keys as k_
from .keys import Keys
from .scripts import Scripts


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


class Row(NamedTuple):
    """A snapshot's counters of one (customer, content): what the flush stages.

    A tuple rather than a dataclass: a window may hold a million of them.
    """

    customer: str
    content: str
    cdn: int
    p2p: int
    sessions: int
    payloads: int
    watch_ms: int = 0


@dataclass(frozen=True)
class Unreadable:
    """A counter hash of a snapshot that does not read as a row: kept, not dropped."""

    ident: bytes
    fields: dict[bytes, bytes]
    reason: str


def closed_windows(redis: Redis, config: Config, shard: int, last_closed: int) -> list[int]:
    """Window indexes of ``shard`` holding live data, up to ``last_closed``."""
    found = redis.zrangebyscore(Keys(config.key_prefix).windows(shard), "-inf", last_closed)
    return [int(k) for k in found]


def freeze(redis: Redis, scripts: Scripts, config: Config, snapshot: Snapshot) -> int:
    """Atomically make the live ident list of a window of one shard ``snapshot``'s.

    Returns the number of idents frozen; 0 means no snapshot was made.
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
            args=[k, snapshot.field],
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


def batch_starts(redis: Redis, config: Config, snapshot: Snapshot) -> range:
    """Where each batch of the snapshot's ident list starts (the list is fixed
    once frozen: nothing is added to a snapshot)."""
    name = Keys(config.key_prefix).snapshot_list(snapshot.shard, snapshot.flush_id, snapshot.k)
    return range(0, int(redis.llen(name)), config.flush_batch_size)


def read_batch(
    redis: Redis, scripts: Scripts, config: Config, snapshot: Snapshot, start: int
) -> list[Row | Unreadable]:
    """The rows of the batch of the snapshot's idents that begins at ``start``.

    It first completes the freeze of their counter hashes (COLLECT). A hash
    that does not read as a row (a damaged name or value) comes out as
    :class:`Unreadable`, for the flusher to isolate.
    """
    keys = Keys(config.key_prefix)
    s, f, k = snapshot.shard, snapshot.flush_id, snapshot.k
    idents = redis.lrange(keys.snapshot_list(s, f, k), start, start + config.flush_batch_size - 1)
    if not idents:
        return []
    live = [keys.counters(s, k, ident) for ident in idents]
    frozen = [keys.snapshot_counters(s, f, k, ident) for ident in idents]
    values = scripts.collect(keys=live + frozen, args=[len(idents)])
    rows: list[Row | Unreadable] = []
    for ident, found in zip(idents, values, strict=True):
        if found[0] == b"*":
            rows.append(_spilled(ident, dict(zip(found[1::2], found[2::2], strict=True))))
        elif found[3] is not None:  # payloads: the hash exists
            rows.append(_row(ident, found))
    return rows


def read_snapshot(
    redis: Redis, config: Config, snapshot: Snapshot, scripts: Scripts | None = None
) -> Iterator[list[Row | Unreadable]]:
    """The snapshot's rows, in batches of at most ``config.flush_batch_size``
    (see ``read_batch``)."""
    scripts = scripts or Scripts(redis)
    for start in batch_starts(redis, config, snapshot):
        yield read_batch(redis, scripts, config, snapshot, start)


def _row(ident: bytes, found: list[bytes | None]) -> Row | Unreadable:
    try:
        customer, content = k_.decode_ident(ident)
        cdn, p2p, sessions, payloads, watch = (int(v) if v else 0 for v in found)
    except (ValueError, UnicodeDecodeError) as exc:
        fields = {f: v for f, v in zip(b"cpsnw", found, strict=True) if v is not None}
        return Unreadable(ident, {bytes([f]): v for f, v in fields.items()}, str(exc))
    return Row(customer, content, cdn, p2p, sessions, payloads, watch)


def _spilled(ident: bytes, fields: dict[bytes, bytes]) -> Row | Unreadable:
    """A hash whose counters went on in spill fields: summed exactly."""
    try:
        customer, content = k_.decode_ident(ident)
        c = counters.from_fields(fields)
    except (ValueError, UnicodeDecodeError) as exc:
        return Unreadable(ident, fields, str(exc))
    return Row(customer, content, c.cdn, c.p2p, c.sessions, c.payloads, c.watch_ms)


def release(redis: Redis, config: Config, snapshot: Snapshot, map_batches: Callable = map) -> None:
    """Delete a snapshot. Only ever called once PostgreSQL holds it; idempotent.

    Its counter hashes go first, batch by batch; ``map_batches`` (the built-in
    ``map``, or the flusher's ``prefetched_map``) runs one deletion per batch.
    """
    keys = Keys(config.key_prefix)
    s, f, k = snapshot.shard, snapshot.flush_id, snapshot.k
    name = keys.snapshot_list(s, f, k)

    def unlink_batch(start: int) -> None:
        idents = redis.lrange(name, start, start + config.flush_batch_size - 1)
        if idents:
            redis.unlink(*(keys.snapshot_counters(s, f, k, ident) for ident in idents))

    for _ in map_batches(unlink_batch, batch_starts(redis, config, snapshot)):
        pass
    # The record goes last: while it exists, a crash here is re-driven. No
    # MULTI: a Redis at maxmemory refuses every command queued in one, and this
    # is how a full Redis gets its memory back.
    pipe = redis.pipeline(transaction=False)
    pipe.delete(name)
    pipe.hdel(keys.snapshots(s), snapshot.field)
    pipe.execute()

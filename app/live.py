"""Live counters: what is still in Redis, read through the window indexes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from redis import Redis

from . import keys as k_
from .buffer import Snapshot
from .config import Config
from .keys import Keys
from .windows import window_end


def p2p_share(cdn: int, p2p: int) -> float | None:
    """The share of bytes that came from peers; None when there were none."""
    total = cdn + p2p
    return p2p / total if total else None


@dataclass(frozen=True)
class LiveRow:
    time: int  # window end, unix seconds
    customer: str
    content: str
    cdn: int
    p2p: int
    sessions: int
    payloads: int

    @property
    def p2p_share(self) -> float | None:
        return p2p_share(self.cdn, self.p2p)


def live_rows(
    redis: Redis,
    config: Config,
    *,
    customer: str | None = None,
    content: str | None = None,
    only_window: int | None = None,
) -> list[LiveRow]:
    """Counters not yet in PostgreSQL, per (window end, customer, content).

    Covers the open window, closed windows waiting for the flush, and frozen
    snapshots not yet committed. Three pipelined round trips; never SCAN.
    A flush running meanwhile may hide a key for an instant (it is moving).
    """
    keys = Keys(config.key_prefix)
    pipe = redis.pipeline(transaction=False)
    for shard in range(config.shards):
        pipe.zrange(keys.windows(shard), 0, -1)
        pipe.hkeys(keys.snapshots(shard))
    listing = pipe.execute()

    sources = []  # (shard, k, key prefix of its counter hashes)
    pipe = redis.pipeline(transaction=False)
    for shard in range(config.shards):
        for raw in listing[2 * shard]:
            k = int(raw)
            if only_window is None or k == only_window:
                sources.append((k, keys.counters_prefix(shard, k).encode()))
                pipe.lrange(keys.index(shard, k), 0, -1)
        for raw in listing[2 * shard + 1]:
            snap = Snapshot.from_field(shard, raw)
            if only_window is None or snap.k == only_window:
                prefix = keys.snapshot_counters_prefix(shard, snap.flush_id, snap.k).encode()
                sources.append((snap.k, prefix))
                pipe.lrange(keys.snapshot_list(shard, snap.flush_id, snap.k), 0, -1)
    members = pipe.execute()

    wanted = []  # (k, customer, content)
    pipe = redis.pipeline(transaction=False)
    for (k, prefix), idents in zip(sources, members, strict=True):
        for ident in idents:
            cu, co = k_.decode_ident(ident)
            if (customer is None or cu == customer) and (content is None or co == content):
                wanted.append((k, cu, co))
                pipe.hmget(prefix + ident, k_.COUNTER_FIELDS)
    sums: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for key, values in zip(wanted, pipe.execute(), strict=True):
        total = sums[key]
        for i, v in enumerate(values):
            if v is not None:
                total[i] += int(v)
    length = config.window_seconds
    rows = [
        LiveRow(window_end(k, length), cu, co, *total)
        for (k, cu, co), total in sums.items()
        if total[3]  # a key moved away by a flush mid-read: not a row
    ]
    return sorted(rows, key=lambda r: (r.time, r.customer, r.content))

"""Live counters: what is still in Redis, read through the window indexes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from redis import Redis

from ..config import Config
from ..windows import window_end
from . import counters
from . import keys as k_
from .counters import Counters
from .keys import Keys
from .snapshots import Snapshot


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
    watch_ms: int = 0

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

    # (shard, k, flush id when the idents are a snapshot's, else None)
    sources = []
    pipe = redis.pipeline(transaction=False)
    for shard in range(config.shards):
        for raw in listing[2 * shard]:
            k = int(raw)
            if only_window is None or k == only_window:
                sources.append((shard, k, None))
                pipe.lrange(keys.index(shard, k), 0, -1)
        for raw in listing[2 * shard + 1]:
            snap = Snapshot.from_field(shard, raw)
            if only_window is None or snap.k == only_window:
                sources.append((shard, snap.k, snap.flush_id))
                pipe.lrange(keys.snapshot_list(shard, snap.flush_id, snap.k), 0, -1)
    members = pipe.execute()

    # A snapshot's ident is read from its snapshot hash once COLLECT moved it
    # there, else from the live hash it still is (docs/exactly-once.md).
    pipe = redis.pipeline(transaction=False)
    for (shard, k, flush_id), idents in zip(sources, members, strict=True):
        for ident in idents:
            cu, co = k_.decode_ident(ident)
            if (customer is None or cu == customer) and (content is None or co == content):
                pipe.hgetall(keys.counters(shard, k, ident))
                if flush_id is not None:
                    pipe.hgetall(keys.snapshot_counters(shard, flush_id, k, ident))
    replies = iter(pipe.execute())
    sums: dict[tuple[int, str, str], Counters] = defaultdict(Counters)
    for (_, k, flush_id), idents in zip(sources, members, strict=True):
        for ident in idents:
            cu, co = k_.decode_ident(ident)
            if not ((customer is None or cu == customer) and (content is None or co == content)):
                continue
            fields = next(replies)
            if flush_id is not None:
                frozen = next(replies)
                if frozen:
                    fields = frozen
            sums[(k, cu, co)] += counters.from_fields(fields)
    length = config.window_seconds
    rows = [
        LiveRow(window_end(k, length), cu, co, t.cdn, t.p2p, t.sessions, t.payloads, t.watch_ms)
        for (k, cu, co), t in sums.items()
        if t.payloads  # a key moved away by a flush mid-read: not a row
    ]
    return sorted(rows, key=lambda r: (r.time, r.customer, r.content))

"""Live counters: what is still in Redis, read through the window indexes."""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from redis import Redis

from ..config import Config
from ..windows import window_end
from . import keys as k_
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

    @property
    def p2p_share(self) -> float | None:
        return p2p_share(self.cdn, self.p2p)


@dataclass(frozen=True)
class LiveRead:
    """One bounded read of the live counters (``top_rows``)."""

    rows: list[LiveRow]  # the top rows by traffic (cdn + p2p), most first
    matched: int  # rows found among the counters read (before the limit)
    counters: int  # counter hashes listed in Redis (live and frozen)
    counters_read: int  # of which read, at most the budget

    @property
    def complete(self) -> bool:
        """Every counter hash listed was read (the budget was not reached)."""
        return self.counters_read >= self.counters

    @property
    def truncated(self) -> bool:
        """Rows were left out: more than the limit matched, or not all was read."""
        return len(self.rows) < self.matched or not self.complete


#: Commands per pipelined round trip while reading counters.
PIPELINE = 1000


@dataclass(frozen=True)
class _Source:
    """One ident list: a window's live index, or a frozen snapshot's list."""

    shard: int
    k: int
    flush_id: str | None  # a snapshot's, else None
    key: str


def top_rows(
    redis: Redis,
    config: Config,
    *,
    customer: str | None = None,
    content: str | None = None,
    only_window: int | None = None,
    limit: int | None = 100,
    max_keys: int | None = None,
) -> LiveRead:
    """Counters not yet in PostgreSQL, per (window end, customer, content): the
    ``limit`` rows with the most traffic (None: every row read).

    Covers the open window, closed windows waiting for the flush, and frozen
    snapshots not yet committed. Never SCAN. A flush running meanwhile may hide
    a key for an instant (it is moving).

    Cost, whatever Redis holds: with S shards and L ident lists (one per shard
    and window or snapshot in Redis), one round trip of 2S commands, one of 2L
    (LLEN and the first idents of each list), one more when lists are uneven,
    then at most B = ``max_keys`` (STATS_LIVE_MAX_KEYS) idents read and at most
    B HMGETs (2 per ident of a snapshot) in pipelines of 1000 commands. The
    budget is shared fairly between the lists; when it is reached the rows are
    the top rows of what was read (``LiveRead.complete`` is False), and a row
    spread over several shards may lack some of its partial sums.
    """
    budget = max_keys or config.live_max_keys
    keys = Keys(config.key_prefix)
    pipe = redis.pipeline(transaction=False)
    for shard in range(config.shards):
        pipe.zrange(keys.windows(shard), 0, -1)
        pipe.hkeys(keys.snapshots(shard))
    listing = pipe.execute()

    sources: list[_Source] = []
    for shard in range(config.shards):
        for raw in listing[2 * shard]:
            k = int(raw)
            if only_window is None or k == only_window:
                sources.append(_Source(shard, k, None, keys.index(shard, k)))
        for raw in listing[2 * shard + 1]:
            snap = Snapshot.from_field(shard, raw)
            if only_window is None or snap.k == only_window:
                key = keys.snapshot_list(shard, snap.flush_id, snap.k)
                sources.append(_Source(shard, snap.k, snap.flush_id, key))
    # Newest windows first: when the budget cuts, the open window's share is read.
    sources.sort(key=lambda src: (-src.k, src.shard, src.flush_id or ""))

    idents, lengths = _read_idents(redis, sources, budget)
    counters = sum(lengths)
    read = sum(len(found) for found in idents)

    wanted = [
        [
            (ident, pair)
            for ident in found
            if (pair := k_.decode_ident(ident))
            and (customer is None or pair[0] == customer)
            and (content is None or pair[1] == content)
        ]
        for found in idents
    ]
    commands = []
    for src, found in zip(sources, wanted, strict=True):
        for ident, _ in found:
            commands.append(keys.counters(src.shard, src.k, ident))
            if src.flush_id is not None:
                commands.append(keys.snapshot_counters(src.shard, src.flush_id, src.k, ident))
    replies = iter(_hmget_all(redis, commands))

    sums: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for src, found in zip(sources, wanted, strict=True):
        for _, (cu, co) in found:
            values = next(replies)
            if src.flush_id is not None:
                frozen = next(replies)
                # A snapshot's ident is read from its snapshot hash once COLLECT
                # moved it there, else from the live hash it still is.
                if frozen[3] is not None:
                    values = frozen
            total = sums[(src.k, cu, co)]
            for i, v in enumerate(values):
                if v is not None:
                    total[i] += int(v)
    length = config.window_seconds
    rows = [
        LiveRow(window_end(k, length), cu, co, *total)
        for (k, cu, co), total in sums.items()
        if total[3]  # a key moved away by a flush mid-read: not a row
    ]

    def order(r: LiveRow) -> tuple:
        return (-(r.cdn + r.p2p), -r.time, r.customer, r.content)

    if limit is not None and len(rows) > limit:
        top = heapq.nsmallest(limit, rows, key=order)
    else:
        top = sorted(rows, key=order)
    return LiveRead(top, len(rows), counters, read)


def _read_idents(
    redis: Redis, sources: list[_Source], budget: int
) -> tuple[list[list[bytes]], list[int]]:
    """The idents of each source, ``budget`` at most in all, and each list's length.

    One round trip reads every list's length and its first ``budget / L``
    idents; when some lists were shorter, one more shares what they left among
    the others.
    """
    if not sources:
        return [], []
    share = max(1, budget // len(sources))
    pipe = redis.pipeline(transaction=False)
    for src in sources:
        pipe.llen(src.key)
        pipe.lrange(src.key, 0, share - 1)
    replies = pipe.execute()
    lengths = [int(n) for n in replies[0::2]]
    idents = [list(found) for found in replies[1::2]]
    left = budget - sum(len(found) for found in idents)
    # Lists longer than their first share, with the budget the others did not use.
    wanting = [(i, lengths[i] - len(idents[i])) for i in range(len(sources)) if lengths[i] > share]
    if left > 0 and wanting:
        still = sum(n for _, n in wanting)
        pipe = redis.pipeline(transaction=False)
        extra = []
        for i, n in wanting:
            more = min(n, left * n // still) if still > left else n
            if more > 0:
                start = len(idents[i])
                pipe.lrange(sources[i].key, start, start + more - 1)
                extra.append(i)
        for i, found in zip(extra, pipe.execute(), strict=True):
            idents[i].extend(found)
    return idents, lengths


def _hmget_all(redis: Redis, names: list[bytes]) -> list[list[bytes | None]]:
    """HMGET of the counter fields of every key, PIPELINE commands per round trip."""
    out: list[list[bytes | None]] = []
    for start in range(0, len(names), PIPELINE):
        pipe = redis.pipeline(transaction=False)
        for name in names[start : start + PIPELINE]:
            pipe.hmget(name, k_.COUNTER_FIELDS)
        out.extend(pipe.execute())
    return out

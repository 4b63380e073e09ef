"""Live counters: what is still in Redis, read through the window indexes."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from redis import Redis

from ..config import Config
from ..windows import window_end
from . import keys as k_
from .counters import Counters
from .counters import from_fields as counters_of
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


@dataclass(frozen=True)
class LiveRead:
    """One bounded read of the live counters (``top_rows``)."""

    rows: list[LiveRow]  # the top rows by traffic (cdn + p2p), most first
    matched: int  # rows found among the counters read (before the limit)
    counters: int  # counter hashes listed in Redis (live and frozen)
    counters_read: int  # of which read, at most the budget
    # The sums of every matched row per window (before the limit), oldest first:
    # customer and content are "" (all of them).
    windows: list[LiveRow] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every counter hash listed was read (the budget was not reached)."""
        return self.counters_read >= self.counters

    @property
    def truncated(self) -> bool:
        """Rows were left out: more than the limit matched, or not all was read."""
        return len(self.rows) < self.matched or not self.complete


#: Idents whose counters are read per pipelined round trip.
PIPELINE = 1000
#: Past this, no further batch of counters is read (a busy machine or Redis):
#: the answer is the rows of what was read, ``complete`` False.
TIME_BUDGET_SECONDS = 2.0


@dataclass(frozen=True)
class _Source:
    """One ident list: a window's live index, or a frozen snapshot's list."""

    shard: int
    k: int
    key: str  # the ident list
    live: bytes  # the name of an ident's live counter hash, less the ident
    frozen: bytes | None  # the same in the snapshot, for a snapshot's list


def top_rows(
    redis: Redis,
    config: Config,
    *,
    customer: str | None = None,
    content: str | None = None,
    search: str | None = None,
    only_window: int | None = None,
    limit: int | None = 100,
    max_keys: int | None = None,
    time_budget: float | None = TIME_BUDGET_SECONDS,
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
    B HMGETs (2 per ident of a snapshot) in pipelines for 1000 idents. The
    budget is shared fairly between the lists; filters are applied to the
    idents, before any counter is read; no batch of counters is started after
    ``time_budget`` seconds (None: no limit). When a budget cuts the read, the rows are the top rows
    of what was read (``LiveRead.complete`` is False), and a row spread over
    several shards may lack some of its partial sums. Ties in traffic are
    ordered newest window first. ``search`` keeps the rows whose customer or
    content contains it, ignoring case (also applied to the idents).
    """
    started = time.monotonic()
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
                live = keys.counters(shard, k, b"")
                sources.append(_Source(shard, k, keys.index(shard, k), live, None))
        for raw in listing[2 * shard + 1]:
            snap = Snapshot.from_field(shard, raw)
            if only_window is None or snap.k == only_window:
                sources.append(
                    _Source(
                        shard,
                        snap.k,
                        keys.snapshot_list(shard, snap.flush_id, snap.k),
                        keys.counters(shard, snap.k, b""),
                        keys.snapshot_counters(shard, snap.flush_id, snap.k, b""),
                    )
                )
    # Newest windows first: when a budget cuts, the open window's share is read.
    sources.sort(key=lambda src: (-src.k, src.shard, src.key))

    idents, lengths = _read_idents(redis, sources, budget)
    counters = sum(lengths)

    # Filters on the ident bytes, before any counter is read ("n:customer:content").
    head = None if customer is None else k_.encode_ident(customer, "")
    tail = None if content is None else b":" + content.encode("utf-8", "surrogatepass")
    needle = search.casefold() if search else None
    jobs: list[tuple[_Source, bytes]] = []
    skipped = 0
    for src, found in zip(sources, idents, strict=True):
        for ident in found:
            if (
                (head is not None and not ident.startswith(head))
                or (
                    tail is not None
                    and not (ident.endswith(tail) and k_.decode_ident(ident)[1] == content)
                )
                or (needle is not None and not _contains(ident, needle))
            ):
                skipped += 1
            else:
                jobs.append((src, ident))

    sums: dict[tuple[int, bytes], Counters] = {}
    done = 0
    for start in range(0, len(jobs), PIPELINE):
        if time_budget is not None and time.monotonic() - started > time_budget:
            break  # the rows of what was read; counters_read says how much
        chunk = jobs[start : start + PIPELINE]
        pipe = redis.pipeline(transaction=False)
        for src, ident in chunk:
            pipe.hgetall(src.live + ident)
            if src.frozen is not None:
                pipe.hgetall(src.frozen + ident)
        replies = iter(pipe.execute())
        for src, ident in chunk:
            fields = next(replies)
            if src.frozen is not None:
                frozen = next(replies)
                # A snapshot's ident is read from its snapshot hash once COLLECT
                # moved it there, else from the live hash it still is.
                if frozen:
                    fields = frozen
            try:
                found = counters_of(fields)
            except ValueError:
                continue  # a damaged hash: the flush isolates it; not a live row
            key = (src.k, ident)
            sums[key] = sums[key] + found if key in sums else found
        done += len(chunk)

    # A key moved away by a flush mid-read (no payloads) is not a row.
    found_rows = [(k, ident, total) for (k, ident), total in sums.items() if total.payloads]

    def order(item: tuple[int, bytes, Counters]) -> tuple:
        k, ident, total = item
        return (-(total.cdn + total.p2p), -k, ident)

    if limit is not None and len(found_rows) > limit:
        top = heapq.nsmallest(limit, found_rows, key=order)
    else:
        top = sorted(found_rows, key=order)
    length = config.window_seconds
    rows = [
        LiveRow(
            window_end(k, length), *k_.decode_ident(ident), t.cdn, t.p2p, t.sessions,
            t.payloads, t.watch_ms,
        )
        for k, ident, t in top
    ]  # fmt: skip
    windows: dict[int, Counters] = {}
    for k, _, total in found_rows:
        windows[k] = windows[k] + total if k in windows else total
    per_window = [
        LiveRow(window_end(k, length), "", "", t.cdn, t.p2p, t.sessions, t.payloads, t.watch_ms)
        for k, t in sorted(windows.items())
    ]
    return LiveRead(rows, len(found_rows), counters, skipped + done, per_window)


def _contains(ident: bytes, needle: str) -> bool:
    """Whether the customer or content of ``ident`` contains ``needle`` (casefolded)."""
    try:
        customer, content = k_.decode_ident(ident)
    except (ValueError, UnicodeDecodeError):
        return False
    return needle in customer.casefold() or needle in content.casefold()


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

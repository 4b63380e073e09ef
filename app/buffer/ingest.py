"""Ingest writes: validated payloads into the live counters of their window.

The session rule (docs/sessions.md) and retry recognition (docs/retries.md)
are applied by the INGEST script in the same atomic call. One call may carry
the payloads of several requests (``record_entries``), which is how a web
worker's requests in flight at the same moment share one round trip
(``payload_stats.ingest.group_commit``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ..config import Config
from ..windows import token_memory_ttl, window_index
from . import keys as k_
from .keys import Keys
from .scripts import Scripts

LATE_MARGIN_SECONDS = 5.0
COUNTED = frozenset(b"csuU")
STARTED = frozenset(b"sU")
UNPROTECTED = frozenset(b"uU")  # counted with no retry memory left for it


@dataclass(frozen=True)
class Entry:
    """The validated payloads of one request, received at ``now``."""

    payloads: Sequence[Mapping[str, Any]]
    now: float


@dataclass(frozen=True)
class Recorded:
    """What was done with the payloads of one request."""

    accepted: int  # payloads counted
    duplicates: int  # retries of payloads already counted, skipped
    sessions: int  # sessions started
    unprotected: int = 0  # counted past the retry-memory bound (docs/retries.md, "Bounds")

    @classmethod
    def from_outcomes(cls, outcomes: bytes) -> Recorded:
        """From the INGEST script's answer: one character per payload."""
        return cls(
            accepted=sum(c in COUNTED for c in outcomes),
            duplicates=outcomes.count(b"d"),
            sessions=sum(c in STARTED for c in outcomes),
            unprotected=sum(c in UNPROTECTED for c in outcomes),
        )


def record(
    redis: Redis,
    scripts: Scripts,
    config: Config,
    payloads: Sequence[Mapping[str, Any]],
    now: float,
) -> Recorded:
    """Add validated payloads received at ``now`` to their window, all or none.

    Raises redis.RedisError if Redis fails: then nothing was written, except
    on Redis Cluster where the error may be ``cluster_ingest.PartlyWritten``
    (some shards' payloads were written; it says which).
    """
    result = record_entries(redis, scripts, config, [Entry(payloads, now)])[0]
    if isinstance(result, BaseException):
        raise result
    return result


def record_entries(
    redis: Redis, scripts: Scripts, config: Config, entries: Sequence[Entry]
) -> list[Recorded | RedisError]:
    """Add several requests' payloads in ONE script call; what each request did.

    The call is atomic: all the entries are written or, when Redis fails
    (redis.RedisError is raised), none. On Redis Cluster
    (``config.redis_cluster``) it is one call per shard instead, and an entry
    whose calls failed gets the error as its result
    (``cluster_ingest.record_entries_per_shard``).
    """
    if config.redis_cluster:
        from .cluster_ingest import record_entries_per_shard

        return record_entries_per_shard(redis, scripts, config, entries)
    keys, args, spans = _call(config, entries)
    outcomes = scripts.ingest(keys=keys, args=args)
    return [Recorded.from_outcomes(outcomes[start:end]) for start, end in spans]


def _call(
    config: Config, entries: Sequence[Entry]
) -> tuple[list[Any], list[Any], list[tuple[int, int]]]:
    """KEYS and ARGV of one INGEST call (its contract is in lua/ingest.lua), and
    each entry's [start, end) among the payloads."""
    names = Keys(config.key_prefix)
    length = config.window_seconds
    short_below = config.window_ms
    groups: dict[tuple[int, int], int] = {}  # (k, shard) -> group number, from 1
    group_keys: list[Any] = []
    group_args: list[Any] = []
    counter_keys: list[Any] = []
    payload_args: list[Any] = []
    spans = []
    # A group whose next window may have begun (by this host's clock, with a
    # margin for other hosts') is late: its sessions are also looked for there.
    late = window_index(time.time() + LATE_MARGIN_SECONDS, length)
    # Entries come in arrival order; the earliest time of a group gives its
    # session memory the longest TTL, which is the safe side.
    # Per payload this runs once for every device payload: names are built
    # once per group and once per (customer, content) of the call.
    prefixes: dict[int, bytes] = {}  # group -> its counter hashes' name prefix
    idents: dict[tuple[str, str], bytes] = {}
    shard_of, session_key, shards = k_.shard_of, k_.session_key, config.shards
    for entry in entries:
        k = window_index(entry.now, length)
        start = len(counter_keys)
        for p in entry.payloads:
            shard = shard_of(p["token"], shards)
            g = groups.get((k, shard))
            if g is None:
                g = groups[(k, shard)] = len(groups) + 1
                group_keys += (
                    names.windows(shard),
                    names.index(shard, k),
                    names.tokens(shard, k + 1),
                    names.tokens(shard, k),
                    names.tokens(shard, k - 1),
                    names.tokens(shard, k - 2),
                )
                group_args += (k, token_memory_ttl(k, entry.now, length), "1" if k < late else "0")
                prefixes[g] = names.counters(shard, k, b"")
            pair = (p["customer"], p["content"])
            ident = idents.get(pair)
            if ident is None:
                ident = idents[pair] = k_.encode_ident(*pair)
            cdn, p2p, duration = p["cdn"], p["p2p"], p["sessionDuration"]
            counter_keys.append(prefixes[g] + ident)
            payload_args += (
                g,
                ident,
                session_key(ident, p["token"]),
                cdn,
                p2p,
                p["timespan"],
                "1" if duration < short_below else "0",
                "1" if cdn + p2p == 0 else "0",
                duration,
            )
        spans.append((start, len(counter_keys)))
    head = [config.dedup_windows, config.retry_memory_bytes, len(groups), length]
    return group_keys + counter_keys, head + group_args + payload_args, spans

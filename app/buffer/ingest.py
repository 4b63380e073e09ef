"""Ingest writes: validated payloads into the live counters of their window.

The session rule (docs/sessions.md) and retry recognition (docs/retries.md)
are applied by the INGEST script in the same atomic call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from ..config import Config
from ..windows import token_memory_ttl, window_index
from . import keys as k_
from .keys import Keys
from .scripts import Scripts

COUNTED = frozenset(b"csuU")
STARTED = frozenset(b"sU")
UNPROTECTED = frozenset(b"uU")  # counted with no retry memory left for it


@dataclass(frozen=True)
class Recorded:
    """What one ``record`` call did."""

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
    """Add validated payloads received at ``now`` to their window.

    One script call per shard: a single payload is one round trip; a batch
    spanning shards is one MULTI/EXEC, so all of it lands or none does.
    Raises redis.RedisError if Redis fails (then nothing was written).
    """
    keys = Keys(config.key_prefix)
    length = config.window_seconds
    k = window_index(now, length)
    head = [k, token_memory_ttl(k, now, length), config.dedup_windows, config.retry_memory_bytes]
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
                k_.session_key(ident, p["token"]),
                cdn,
                p2p,
                p["timespan"],
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
    return Recorded.from_outcomes(b"".join(results))

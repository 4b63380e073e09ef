"""The fields of a counter hash, and reading them back into numbers.

A counter hash exists per (window, shard, customer, content): one-byte field
names, because they are paid for millions of times. A counter that would
pass 2^63-1 continues in spill fields ``c1``, ``c2``, ... (see
lua/ingest.lua and docs/stats-table.md, "Counter bounds"); reading sums them
in Python integers, which do not overflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CDN = b"c"
P2P = b"p"
WATCH = b"w"
SESSIONS = b"s"
PAYLOADS = b"n"

_FIELDS = {CDN: "cdn", P2P: "p2p", WATCH: "watch_ms", SESSIONS: "sessions", PAYLOADS: "payloads"}


@dataclass(frozen=True)
class Counters:
    cdn: int = 0
    p2p: int = 0
    sessions: int = 0
    payloads: int = 0
    watch_ms: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.cdn + other.cdn,
            self.p2p + other.p2p,
            self.sessions + other.sessions,
            self.payloads + other.payloads,
            self.watch_ms + other.watch_ms,
        )


def from_fields(fields: Mapping[bytes, bytes]) -> Counters:
    """The counters of a hash's fields (HGETALL). Raises ValueError on a field
    that is not a counter or a value that is not an integer."""
    totals = dict.fromkeys(_FIELDS.values(), 0)
    for field, value in fields.items():
        name = _FIELDS.get(field[:1])
        if name is None or not (len(field) == 1 or field[1:].isdigit()):
            raise ValueError(f"unexpected counter field {field!r}")
        totals[name] += int(value)
    return Counters(**totals)

"""Pure time arithmetic for stats windows (docs/windows.md).

A payload received at unix time ``t`` belongs to window ``k = floor(t / L)``,
the half-open interval ``[k*L, (k+1)*L)``. A window is named by its index
``k`` in Redis and by its end ``(k+1)*L`` in PostgreSQL.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone


def window_index(t: float, length: int) -> int:
    """The index of the window holding time ``t``."""
    return math.floor(t / length)


def window_end(k: int, length: int) -> int:
    """The end of window ``k`` in unix seconds: the window's *time*."""
    return (k + 1) * length


def window_end_datetime(k: int, length: int) -> datetime:
    return datetime.fromtimestamp(window_end(k, length), tz=timezone.utc)


def last_closed_window(now: float, length: int, grace: float) -> int:
    """The highest window index that may be flushed at ``now``.

    Window ``k`` may be flushed once ``now >= end(k) + grace``.
    """
    return math.floor((now - grace) / length) - 1


def token_memory_ttl(k: int, now: float, length: int) -> int:
    """Seconds the token memory of window ``k`` must live, counted from ``now``.

    A token last seen in window ``k`` may be forgotten only after 2L without
    payloads, i.e. not before ``end(k) + 2L``; one extra second absorbs the
    rounding and the clock read between the app and Redis.
    """
    return max(1, math.ceil((k + 3) * length - now) + 1)

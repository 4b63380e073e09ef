"""Flush figures kept in Redis, so every web replica can report them on /metrics.

The scheduler may run on another host than the web processes; it writes its
counters into one hash (``Keys.flush_stats``) after each run.
"""

from __future__ import annotations

import time

from redis import Redis
from redis.exceptions import RedisError

from ..buffer.keys import Keys
from ..config import Config


def record_flush(
    redis: Redis,
    config: Config,
    *,
    ok: bool,
    rows: int = 0,
    watch_ms: int = 0,
    duration: float = 0.0,
    quarantined: int = 0,
) -> None:
    """Count one scheduled run; never raises (figures are best effort)."""
    name = Keys(config.key_prefix).flush_stats()
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.hincrby(name, "runs" if ok else "failures", 1)
        if ok:
            pipe.hincrby(name, "rows", rows)
            # Watch time written: rate(...) / 1000 is the average number of
            # concurrent viewers (docs/stats-table.md, "Watch time and average viewers").
            pipe.hincrby(name, "watch_ms", watch_ms)
            pipe.hset(
                name,
                mapping={
                    "last_duration": duration,
                    "last_success": time.time(),
                    "quarantined": quarantined,
                },
            )
        pipe.execute()
    except RedisError:
        pass


def read_figures(redis: Redis, config: Config) -> dict[str, float]:
    """The recorded figures: runs, failures, rows, watch_ms, last_duration, last_success.

    Raises redis.RedisError.
    """
    raw = redis.hgetall(Keys(config.key_prefix).flush_stats())
    return {name.decode(): float(value or 0) for name, value in raw.items()}

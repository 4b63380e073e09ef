"""Filling Redis quickly with the project's own code (``payload_stats.buffer.ingest.record``).

Used by the flush and memory phases: payloads are recorded at an instant in
a past window, 1000 per call, so the window is closed when the flush runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from redis import Redis

from payload_stats.buffer import ingest
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config

BATCH = 1000


def past_instant(now: float, window_seconds: int) -> float:
    """An instant two windows ago: its window is closed (and past the grace) now."""
    return now - 2 * window_seconds


def key_payloads(n: int, tokens: int = 64) -> Iterator[dict[str, Any]]:
    """``n`` payloads, each to a distinct (customer, content), from ``tokens`` sessions.

    Few tokens keep the token memory negligible next to the counters; every
    payload carries a distinct sessionDuration, so none is a retry.
    """
    for i in range(n):
        yield {
            "token": f"fill-token-{i % tokens:04d}",
            "customer": f"customer-{i % 10:02d}",
            "content": f"vod/{i // 10:07d}",
            "timespan": 30_000,
            "p2p": 1_000_000 + i,
            "cdn": 2_000_000 + i,
            "sessionDuration": 30_000 * (i + 1),
        }


def token_payloads(n: int) -> Iterator[dict[str, Any]]:
    """``n`` payloads of ``n`` distinct new sessions, all to one (customer, content)."""
    for i in range(n):
        yield {
            "token": f"8c7e4d7a-4b0e-4f5e-9d55-{i:012x}",  # uuid-shaped, 36 characters
            "customer": "customer-00",
            "content": "live/channel-000",
            "timespan": 30_000,
            "p2p": 1_000_000,
            "cdn": 2_000_000,
            "sessionDuration": 30_000,
        }


def record_all(redis: Redis, config: Config, payloads: Iterator[dict[str, Any]], now: float) -> int:
    """Record ``payloads`` at ``now`` in calls of 1000; returns how many were counted."""
    scripts = Scripts(redis)
    counted = 0
    chunk: list[dict[str, Any]] = []
    for payload in payloads:
        chunk.append(payload)
        if len(chunk) == BATCH:
            counted += ingest.record(redis, scripts, config, chunk, now).accepted
            chunk = []
    if chunk:
        counted += ingest.record(redis, scripts, config, chunk, now).accepted
    return counted

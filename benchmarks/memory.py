"""Redis memory per (window, customer, content) key and per remembered token.

Each case fills a fresh key prefix and reads ``INFO memory`` ``used_memory``
before and after (the figure the issue asks for). Another client writing to
the same server at that moment would skew it, so the sum of ``MEMORY USAGE``
over the case's own keys is reported beside it as a cross-check (it misses
the server's per-key dictionary overhead, so it reads a little lower).

Cases: the project's counters (dedup off, few tokens), the project's token
memory with de-duplication on (the default) and off, and the ``direct``
peer's layout for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from redis import Redis

from payload_stats.config import Config

from . import fill, sandbox
from .peers import direct


def _used_memory(redis: Redis) -> int:
    # Deletions of earlier cases are freed in the background: wait for them.
    for _ in range(100):
        info = redis.info("memory")
        if not info.get("lazyfree_pending_objects"):
            return int(info["used_memory"])
        time.sleep(0.05)
    return int(redis.info("memory")["used_memory"])


def _keys_usage(redis: Redis, prefix: str) -> int:
    total = 0
    batch: list[bytes] = []
    for key in sandbox.scan_keys(redis, prefix):
        batch.append(key)
        if len(batch) == 1000:
            total += _usage(redis, batch)
            batch = []
    return total + (_usage(redis, batch) if batch else 0)


def _usage(redis: Redis, keys: list[bytes]) -> int:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(n or 0 for n in pipe.execute())


def measure(redis: Redis, prefix: str, count: int, fill_with: Callable[[], Any]) -> dict:
    """Bytes per item of ``fill_with()``, which writes ``count`` items under ``prefix``."""
    try:
        before = _used_memory(redis)
        fill_with()
        after = _used_memory(redis)
        usage = _keys_usage(redis, prefix)
    finally:
        sandbox.delete_prefix(redis, prefix)
    return {
        "count": count,
        "bytes_per_item": round((after - before) / count, 1),
        "memory_usage_per_item": round(usage / count, 1),
    }


def _direct_fill(redis: Redis, prefix: str, payloads: Any, at: float) -> None:
    chunk: list[dict] = []
    for p in payloads:
        chunk.append(p)
        if len(chunk) == fill.BATCH:
            direct.record(redis, prefix, 300, chunk, at)
            chunk = []
    if chunk:
        direct.record(redis, prefix, 300, chunk, at)


def short_prefix(redis: Redis) -> str:
    """A free two-character prefix, as long as the default ``ps``.

    Key names are paid in every key's memory, so the cases use a prefix of
    the default's length rather than the run's longer unique one.
    """
    for c in "0123456789abcdefghijklmnopqrstuvwxyz":
        prefix = f"m{c}"
        if next(sandbox.scan_keys(redis, prefix), None) is None:
            return prefix
    raise RuntimeError("no free two-character key prefix m0..mz in this Redis database")


def run(redis: Redis, config: Config, keys: int, tokens: int) -> dict[str, dict]:
    """All cases; each under a fresh short prefix, deleted after."""
    at = fill.past_instant(time.time(), config.window_seconds)
    results = {}

    def project(name: str, cfg: Config, payloads: Any, count: int) -> None:
        cfg = replace(cfg, key_prefix=short_prefix(redis))
        results[name] = measure(
            redis, cfg.key_prefix, count, lambda: fill.record_all(redis, cfg, payloads, at)
        )

    def peer(name: str, payloads: Any, count: int) -> None:
        prefix = short_prefix(redis)
        results[name] = measure(
            redis, prefix, count, lambda: _direct_fill(redis, prefix, payloads, at)
        )

    no_dedup = replace(config, dedup_seconds=0)
    project("pk", no_dedup, fill.key_payloads(keys), keys)
    project("pt", replace(config, dedup_seconds=None), fill.token_payloads(tokens), tokens)
    project("pt0", no_dedup, fill.token_payloads(tokens), tokens)
    peer("dk", fill.key_payloads(keys), keys)
    peer("dt", fill.token_payloads(tokens), tokens)
    return {
        "project_per_key": results["pk"],
        "project_per_token": results["pt"],
        "project_per_token_nodedup": results["pt0"],
        "direct_per_key": results["dk"],
        "direct_per_token": results["dt"],
    }

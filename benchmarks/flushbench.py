"""Flush speed: ``payload_stats.flush.flusher.flush_once`` over one closed window of N keys.

The window is filled with N distinct (customer, content) counter hashes,
then one ``flush_once`` moves it into PostgreSQL, in a fresh process so its
peak memory can be read. The peer is ``copy``: the same N rows through the
project's own write path (ledger claim, COPY into staging, the upsert into
``stats`` and its rollups), in one transaction, straight from a Python list
-- the PostgreSQL floor of the same write, no Redis.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import psycopg2

from payload_stats.buffer.connection import redis_client
from payload_stats.buffer.snapshots import Row
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.postgres import partitions, writes
from payload_stats.postgres.migrations import migrate
from payload_stats.postgres.pool import database_pool

from . import fill


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    """The process's peak RSS since ``_reset_peak_rss`` (VmHWM). Not ru_maxrss: it
    survives exec, so a spawned child would report its parent's size at fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _flush_child(config: Config, queue: Any) -> None:
    redis = redis_client(replace(config, redis_timeout_seconds=60))
    pool = database_pool(config, 1)
    _reset_peak_rss()
    rss_before = _rss_mb()
    started = time.perf_counter()
    report = flush_once(redis, pool, config)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    queue.put(
        {
            "rows": report.rows,
            "seconds": seconds,
            "peak_rss_growth_mb": round(max(0.0, peak - rss_before), 1),
        }
    )
    pool.closeall()


def time_flush(config: Config) -> dict[str, Any]:
    """Run ``flush_once`` in a fresh process; rows, seconds, peak RSS growth."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_flush_child, args=(config, queue))
    child.start()
    try:
        result = queue.get(timeout=600)
    finally:
        child.join(timeout=60)
    return result


def copy_baseline(database_url: str, n: int, window_end: float) -> dict[str, Any]:
    """The peer: the same ``n`` rows through the project's own write path (ledger
    claim, COPY into staging, upsert into ``stats`` and its rollups) in one
    transaction, from a Python list built beforehand: the PostgreSQL floor of
    a flush, no Redis. Written at a window a day after the flushed one."""
    end = datetime.fromtimestamp(window_end + 86_400, tz=timezone.utc)
    rows = [
        Row(p["customer"], p["content"], p["cdn"], p["p2p"], 0, 1, p["timespan"])
        for p in fill.key_payloads(n)
    ]
    conn = psycopg2.connect(database_url)
    try:
        partitions.ensure(conn, [partitions.day_of(end)])
        started = time.perf_counter()
        with conn:
            owned = writes.claim_ids(conn, end, ["copy-peer"])
            writes.start_staging(conn, end)
            writes.stage(conn, rows)
            written = writes.upsert(conn, end, owned)
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {"rows": written.rows, "seconds": seconds}


def run(config: Config, n: int) -> dict[str, Any]:
    """Fill one closed window with ``n`` keys, flush it, and run the peer."""
    pool = database_pool(config, 1)
    migrate(pool)
    pool.closeall()
    redis = redis_client(replace(config, redis_timeout_seconds=60))
    at = fill.past_instant(time.time(), config.window_seconds)
    started = time.perf_counter()
    fill.record_all(redis, config, fill.key_payloads(n), at)
    fill_seconds = time.perf_counter() - started
    flushed = time_flush(config)
    window_end = (at // config.window_seconds + 1) * config.window_seconds
    peer = copy_baseline(config.database_url, n, window_end)
    redis.close()
    return {
        "keys": n,
        "fill_seconds": round(fill_seconds, 3),
        "rows": flushed["rows"],
        "seconds": round(flushed["seconds"], 3),
        "rows_per_s": round(flushed["rows"] / flushed["seconds"], 1),
        "peak_rss_growth_mb": flushed["peak_rss_growth_mb"],
        "copy_rows": peer["rows"],
        "copy_seconds": round(peer["seconds"], 3),
        "copy_rows_per_s": round(peer["rows"] / peer["seconds"], 1),
    }

"""The Redis side of a cluster, driven without the web side.

Web workers under load hand ``record_entries`` groups of requests (group
commit, up to 1000 payloads a call). Here ``processes`` driver processes do
just that, as fast as they can, against one cluster: groups of ``group``
single-payload entries of realistic payloads, for ``seconds``. What it
measures is each master's CPU per payload when the masters are busy: the
Redis work a payload costs on the master of its shard, which is what a
master's capacity is made of. On a machine with fewer cores than drivers
plus masters, the payloads/s are the machine's, not the cluster's: compare
the CPU per payload.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import time
from typing import Any

from payload_stats.buffer.connection import redis_client
from payload_stats.buffer.ingest import Entry, record_entries
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config

from .localcluster import LocalCluster


def _payloads(seed: int):
    """Realistic payloads: 50,000 sessions, 10 customers x 100 contents, each session
    sending every 30 s (its sessionDuration grows), 5 % with zero bytes."""
    rng = random.Random(seed)
    sent = [0] * 50_000
    while True:
        t = rng.randrange(len(sent))
        sent[t] += 1
        zero = rng.random() < 0.05
        yield {
            "token": f"drive-{seed}-{t:06d}",
            "customer": f"customer-{t % 10}",
            "content": f"content-{t % 100}",
            "timespan": 30_000,
            "p2p": 0 if zero else rng.randrange(1, 5_000_000),
            "cdn": 0 if zero else rng.randrange(1, 5_000_000),
            "sessionDuration": 30_000 * sent[t],
        }


def _drive(config: Config, seconds: float, group: int, seed: int, queue: Any) -> None:
    redis = redis_client(config)
    scripts = Scripts(redis)
    source = _payloads(seed)
    now = time.time()
    counted = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        entries = [Entry([p], now) for p in itertools.islice(source, group)]
        for result in record_entries(redis, scripts, config, entries):
            if isinstance(result, Exception):
                failed += 1
            else:
                counted += result.accepted + result.duplicates
    queue.put((counted, failed))
    redis.close()


def run(
    cluster: LocalCluster, config: Config, seconds: float, processes: int = 2, group: int = 256
) -> dict[str, Any]:
    """Drive ``cluster`` from ``processes`` processes; payloads/s and CPU per payload."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    masters = cluster.primaries()
    before = [m.cpu_seconds() for m in masters]
    started = time.monotonic()
    drivers = [
        ctx.Process(target=_drive, args=(config, seconds, group, n, queue))
        for n in range(processes)
    ]
    for d in drivers:
        d.start()
    outcomes = [queue.get(timeout=seconds + 120) for _ in drivers]
    for d in drivers:
        d.join(30)
    elapsed = time.monotonic() - started
    counted = sum(c for c, _ in outcomes)
    failed = sum(f for _, f in outcomes)
    per_master = [
        round(1e6 * (m.cpu_seconds() - b) / max(1, counted), 2)
        for m, b in zip(masters, before, strict=True)
    ]
    return {
        "processes": processes,
        "group": group,
        "payloads": counted,
        "failed": failed,
        "payloads_per_s": round(counted / elapsed, 1),
        "redis_cpu_us_per_master": per_master,
        "redis_cpu_us": round(sum(per_master), 2),
    }

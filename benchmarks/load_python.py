"""A Python load generator, for machines without wrk (and for the smoke test).

Connections are spread over processes (one per core, at most), each running
one thread per connection with a keep-alive ``http.client`` connection (it
reconnects by itself when a server closes). With ``LoadSpec.rate`` each
connection sends on a fixed schedule and latency counts from the scheduled
instant, so a stalled server is not hidden (no coordinated omission).
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import threading
import time
from urllib.parse import urlsplit

from .load import LoadResult, LoadSpec
from .payloads import PayloadStream

HEADERS = {"Content-Type": "application/json"}
CLOSE_HEADERS = {**HEADERS, "Connection": "close"}


def _connection_loop(spec: LoadSpec, seed: int, start: float, out: list) -> None:
    """One connection: send until the deadline; append (latencies, non2xx, errors)."""
    parts = urlsplit(spec.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    stream = PayloadStream(seed)
    interval = spec.connections / spec.rate if spec.rate else 0.0
    deadline = start + spec.duration
    scheduled = start + (seed % 1000) / 1000 * interval  # spread the connections
    latencies: list[float] = []
    non2xx = errors = 0
    while True:
        body = stream.body(spec.batch)
        if interval:
            scheduled += interval
            pause = scheduled - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            began = scheduled
        else:
            began = time.monotonic()
        if began >= deadline:
            break
        try:
            conn.request("POST", parts.path or "/", body, CLOSE_HEADERS if spec.close else HEADERS)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            continue
        latencies.append(time.monotonic() - began)
        if not 200 <= response.status < 300:
            non2xx += 1
    conn.close()
    out.append((latencies, non2xx, errors))


def _process(spec: LoadSpec, connections: int, seed: int, start: float) -> tuple:
    out: list = []
    threads = [
        threading.Thread(target=_connection_loop, args=(spec, seed + i, start, out))
        for i in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = [x for lat, _, _ in out for x in lat]
    return latencies, sum(n for _, n, _ in out), sum(e for _, _, e in out)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def run(spec: LoadSpec) -> LoadResult:
    """Run one phase from ``min(connections, cores)`` processes."""
    procs = max(1, min(spec.connections, os.cpu_count() or 1))
    shares = [spec.connections // procs + (i < spec.connections % procs) for i in range(procs)]
    base = int.from_bytes(os.urandom(3), "big") * 1000
    start = time.monotonic() + 0.2  # the processes start sending together
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        results = pool.starmap(
            _process, [(spec, n, base + 100 * i, start) for i, n in enumerate(shares)]
        )
    latencies = sorted(x for lat, _, _ in results for x in lat)
    return LoadResult(
        loader="python",
        requests=len(latencies),
        seconds=spec.duration,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        non2xx=sum(n for _, n, _ in results),
        errors=sum(e for _, _, e in results),
        batch=spec.batch,
    )

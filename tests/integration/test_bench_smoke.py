"""The benchmark harness runs end to end and produces a well-formed result.

Not a timed test: one short slice per peer with the Python load generator
(no wrk needed), two gunicorn workers per server, tiny flush and memory
phases. It checks the shape of the results and that the project answered
every valid payload with 2xx -- not how fast anything was.
"""

from __future__ import annotations

import json
import time

import pytest

from benchmarks import report, runner
from benchmarks.servers import WorkerSetup

PEERS = ("project", "direct", "naive-pg", "bare")
LOAD_KEYS = {
    "loader",
    "requests",
    "seconds",
    "rps",
    "payloads_per_s",
    "p50_ms",
    "p99_ms",
    "non2xx",
    "errors",
    "slices",
    "worker_cpu_us",
    "redis_cpu_us",
}


def test_harness_smoke(redis_url, pg_schema, key_prefix):
    options = runner.Options(
        duration=1,
        slice_seconds=1,
        warmup=0,
        connections=2,
        loader="python",
        only=(*PEERS, "batch", "half-load", "flush", "memory"),
        batch_size=20,
        flush_keys=(200,),
        memory_keys=300,
        memory_tokens=300,
        setup=WorkerSetup(workers=2),
        redis_url=redis_url,
        database_url=pg_schema,
        key_prefix=key_prefix,
        own_schema=False,
        log=lambda message: print(f"{time.monotonic():.1f} {message}"),
    )
    results = runner.run(options)

    for name in PEERS:
        load = results["load"][name]
        assert LOAD_KEYS <= set(load), name
        assert load["loader"] == "python"
        assert load["requests"] > 0 and load["rps"] > 0, name
        assert load["p99_ms"] >= load["p50_ms"] > 0, name
    for phase in (
        results["load"]["project"],
        results["batch"]["project"],
        results["half_load"]["project"],
    ):
        assert phase["non2xx"] == 0 and phase["errors"] == 0
    batch = results["batch"]["project"]
    assert batch["payloads_per_s"] == pytest.approx(20 * batch["rps"], rel=0.01)
    assert results["half_load"]["rate"] > 0 and results["half_load"]["direct"]["requests"] > 0

    [flush] = results["flush"]
    assert flush["keys"] == flush["rows"] == flush["copy_rows"] == 200
    assert flush["rows_per_s"] > 0 and flush["copy_rows_per_s"] > 0
    assert set(results["memory"]) == {
        "project_per_key",
        "project_per_token",
        "project_per_token_nodedup",
        "direct_per_key",
        "direct_per_token",
    }
    # INFO memory is the whole shared server's: only the per-key figure is sure.
    assert all(
        m["count"] == 300 and m["memory_usage_per_item"] > 0 for m in results["memory"].values()
    )

    table = report.rows(results)
    figures = {row.figure for row in table}
    assert {
        "POST /stats req/s",
        "p99 latency at half the max rate",
        "project non-2xx + socket errors",
    } <= figures
    assert all(
        row.ratio is None or row.ratio >= 0
        for row in table
        if not row.figure.startswith("Redis bytes")
    )
    assert "POST /stats req/s" in report.text_table(table)
    json.dumps(results, default=str)  # what --json writes


def test_harness_cluster_phase_smoke(redis_url, pg_schema, key_prefix):
    """The cluster phase starts its own local clusters, loads each, drives the Redis
    side alone, and derives the capacity figures; not timed."""
    from benchmarks import localcluster

    if not localcluster.available():
        pytest.skip("redis-server and redis-cli are needed for the cluster phase")
    options = runner.Options(
        duration=0.5,
        slice_seconds=0.5,
        warmup=0,
        connections=2,
        loader="python",
        only=("cluster",),
        batch_size=20,
        cluster_shards=16,
        cluster_setups=("1", "3"),  # not the replicated ones: this only checks the shape
        setup=WorkerSetup(workers=1),
        redis_url=redis_url,
        database_url=pg_schema,
        key_prefix=key_prefix,
        own_schema=False,
    )
    results = runner.run(options)

    assert set(results["cluster"]) == {"1", "3"}
    for label, found in results["cluster"].items():
        assert sum(found["shards_per_master"]) == 16, label
        for kind in ("single", "batch"):
            phase = found[kind]
            assert phase["requests"] > 0 and phase["non2xx"] == 0 and phase["errors"] == 0
            assert len(phase["redis_cpu_us_per_master"]) == found["masters"]
    drive = results["cluster_drive"]
    assert {(r["shards"], r["group"], r["masters"]) for r in drive} == {
        (s, g, m) for s, g in ((8, 256), (16, 256), (8, 1)) for m in (1, 3)
    }
    assert all(r["payloads"] > 0 and r["failed"] == 0 for r in drive)
    figures = {row.figure for row in report.rows(results)}
    assert "cluster, 3 masters: POST /stats payloads/s" in figures
    assert any(f.startswith("cluster Redis side alone") for f in figures)

"""The benchmark's availability phase runs end to end (tiny: a shape check, not a timing)."""

from __future__ import annotations

import time

import pytest

from benchmarks import availability, report, runner
from benchmarks.servers import WorkerSetup

pytestmark = pytest.mark.slow


def test_availability_phase_smoke(redis_url, pg_schema, key_prefix):
    if availability.nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    options = runner.Options(
        only=("availability",),
        slow_clients=6,
        probes=10,
        live_keys=300,
        setup=WorkerSetup(workers=2),
        redis_url=redis_url,
        database_url=pg_schema,
        key_prefix=key_prefix,
        own_schema=False,
        log=lambda message: print(f"{time.monotonic():.1f} {message}"),
    )
    results = runner.run(options)["availability"]
    phases = ("quiet_direct", "quiet_nginx", "attacked_nginx", "readers_direct", "locked_direct")
    for name in phases:
        assert results[name]["probes"] == 10, name
        assert results[name]["p99_ms"] >= results[name]["p50_ms"] > 0, name
    assert results["quiet_nginx"]["failures"] == results["attacked_nginx"]["failures"] == 0
    assert results["locked_direct"]["failures"] == 0
    assert set(results["reads_locked"]["statuses"]) <= {"200", "503"}
    assert results["live"]["counters"] >= 300
    table = report.rows({"availability": results})
    assert len(table) == 5 and all(row.ratio is not None for row in table)
    assert "through nginx" in report.text_table(table)

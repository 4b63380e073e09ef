"""A Redis that may evict keys would lose buffered payloads: every process refuses
to start on a policy other than ``noeviction``, and /readyz fails if it changes
later. Each test runs its own redis-server; the commands run as subprocesses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import psycopg2
import pytest

from tests.integration.test_exactness_support import (
    OwnRedis,
    WebProcess,
    environment,
    metric,
    only_line,
)
from tests.support.servers import free_port, run_cli

REFUSAL = (
    "payload-stats: error: Redis maxmemory-policy is 'allkeys-lru': it may evict buffered "
    "payloads; set it to noeviction (redis-cli CONFIG SET maxmemory-policy noeviction)"
)

pytestmark = pytest.mark.parametrize("shards", [2], ids=["2shards"])


def own_redis(*args: str) -> Iterator[OwnRedis]:
    server = OwnRedis(*args).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def lru() -> Iterator[OwnRedis]:
    yield from own_redis("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")


@pytest.fixture
def safe() -> Iterator[OwnRedis]:
    yield from own_redis("--maxmemory", "64mb", "--maxmemory-policy", "noeviction")


def tables(database_url: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
        return cur.fetchone()[0]


@pytest.mark.parametrize(
    "command",
    [("flush",), ("live", "--once"), ("scheduler",), ("web", "--bind")],
    ids=["flush", "live", "scheduler", "web"],
)
def test_every_process_refuses_an_evicting_redis(config, lru, tmp_path, command):
    config = replace(config, redis_url=lru.url, data_dir=str(tmp_path))
    env = environment(config)
    if command[0] == "live":
        del env["DATABASE_URL"]  # live reads Redis only
    if command[0] == "web":
        command = (*command, f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    refused = run_cli(env, *command, timeout=15)
    assert time.monotonic() - started < 5
    assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
    assert only_line(refused.stderr) == REFUSAL
    # Refused before anything: no record in Redis, no schema in PostgreSQL.
    client = lru.client()
    assert client.dbsize() == 0
    client.close()
    assert tables(config.database_url) == 0


def test_readyz_fails_while_the_policy_is_changed_at_runtime(config, safe, tmp_path):
    config = replace(config, redis_url=safe.url, data_dir=str(tmp_path))
    auth = {"Authorization": "Bearer api-secret"}
    web = WebProcess(environment(config, STATS_API_TOKEN="api-secret"), tmp_path / "web.log")
    admin = safe.client()
    try:
        web.wait_ready()
        status, _, body = web.request("GET", "/readyz")
        assert (status, body["checks"]) == (
            200,
            {"redis": "ok", "redis_eviction": "ok", "redis_memory": "ok", "postgres": "ok"},
        )

        admin.config_set("maxmemory-policy", "volatile-lru")
        status, _, body = web.request("GET", "/readyz")
        assert (status, body) == (
            503,
            {
                "error": "not_ready",
                "message": "Not ready: redis_eviction.",
                "checks": {
                    "redis": "ok",
                    "redis_eviction": "unsafe",
                    "redis_memory": "ok",
                    "postgres": "ok",
                },
            },
        )
        status, _, body = web.request("GET", "/readyz", headers=auth)
        assert (status, body["details"]["redis_eviction"]) == (503, "maxmemory-policy volatile-lru")
        status, _, scraped = web.request("GET", "/metrics", headers=auth)
        assert status == 200
        assert metric(scraped, "payload_stats_redis_eviction_safe") == 0

        admin.config_set("maxmemory-policy", "noeviction")
        status, _, body = web.request("GET", "/readyz")
        assert (status, body["status"], body["checks"]["redis_eviction"]) == (200, "ready", "ok")
        status, _, scraped = web.request("GET", "/metrics", headers=auth)
        assert metric(scraped, "payload_stats_redis_eviction_safe") == 1
    finally:
        admin.close()
        code = web.stop()
        print(web.output())
    assert code == 0

"""A full Redis: ingest refuses all or nothing, readiness says so, and the flush drains it.

Each test starts its own redis-server (``noeviction``, ``maxmemory`` a few
hundred KB above what it uses empty) and fills it through the application
until a request answers 503 ``buffer_full``. In process, with the FakeClock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from payload_stats.buffer import keys as k_
from payload_stats.buffer.connection import redis_client
from payload_stats.buffer.memory import memory_state
from payload_stats.flush.flusher import flush_once
from payload_stats.flush.lock import flush_with_lock
from payload_stats.web.app import create_app
from payload_stats.windows import window_end, window_index
from tests.conftest import START, payload
from tests.integration.test_exactness_support import (
    OwnRedis,
    environment,
    keyspace,
    metric,
    stats_table,
    tokens_in_shards,
)
from tests.support.servers import run_cli

HEADROOM = 400 * 1024
END = window_end(window_index(START, 300), 300)
GRACE = 5  # the config fixture's
BUFFER_FULL_MESSAGE = "The stats buffer is full; nothing was written. Retry after the time given."

pytestmark = pytest.mark.parametrize("shards", [4], ids=["4shards"])


@pytest.fixture
def own() -> Iterator[OwnRedis]:
    # No per-command latency histograms: each costs tens of KB of used_memory the
    # first time a command runs, which would blur a headroom of a few hundred KB.
    server = OwnRedis("--maxmemory-policy", "noeviction", "--latency-tracking", "no").start()
    try:
        client = server.client()
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + HEADROOM)
        client.close()
        yield server
    finally:
        server.close()


@pytest.fixture
def full_config(config, own):
    return replace(config, redis_url=own.url)


@pytest.fixture
def full_redis(full_config):
    client = redis_client(full_config)
    yield client
    client.close()


@pytest.fixture
def full_client(full_config, clock):
    return create_app(full_config, clock=clock).test_client()


class Expected:
    """The rows the payloads answered 200 must become (every pair new, one payload each)."""

    def __init__(self, window_seconds: int = 300) -> None:
        self.window_ms = window_seconds * 1000
        self.rows: dict[tuple[int, str, str], tuple[int, int, int, int, int]] = {}

    def add(self, end: int, body: dict) -> None:
        key = (end, body["customer"], body["content"])
        assert key not in self.rows
        starts = int(body["sessionDuration"] < self.window_ms)
        self.rows[key] = (body["cdn"], body["p2p"], starts, 1, body["timespan"])


def batch(n: int, size: int = 40) -> list[dict]:
    """``size`` payloads of new pairs (long names: the buffer fills fast), over 4 shards."""
    return [
        payload(
            token=f"fill-{n}-{i}",
            customer=f"customer-{n}",
            content=f"{i:03d}-" + "c" * 240,
            cdn=1000 * n + i,
            p2p=i,
            timespan=n + 1,
            sessionDuration=500 + i,
        )
        for i in range(size)
    ]


def fill(client, redis, expected: Expected, end: int = END):
    """Post batches spanning the 4 shards until one answers 503; returns that response.

    Then lowers maxmemory 64 KB below what Redis uses: the query buffer of a large
    request counts in used_memory, so without it a smaller request could still fit.
    """
    for n in range(1000):
        sent = batch(n)
        assert len({k_.shard_of(p["token"], 4) for p in sent}) == 4
        response = client.post("/stats/batch", json=sent)
        if response.status_code == 503:
            assert n > 0, "full before the first batch: the headroom is too small"
            redis.config_set("maxmemory", memory_state(redis).used_bytes - 64 * 1024)
            return response
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json() == {"accepted": len(sent), "duplicates": 0}
        for body in sent:
            expected.add(end, body)
    raise AssertionError("Redis never filled up")


def mixed_batch(expected: Expected) -> list[dict]:
    """A batch over every shard, half of it for pairs already counted."""
    tokens = tokens_in_shards(4, 2, stem="late")
    known = sorted(expected.rows)[:4]
    return [
        payload(token=tokens[s][0], customer=known[s][1], content=known[s][2], cdn=7, p2p=7)
        for s in range(4)
    ] + [payload(token=tokens[s][1], customer="new", content=f"n{s}", cdn=9) for s in range(4)]


# --- all or nothing -----------------------------------------------------------------------------


def test_a_refused_request_writes_nothing_and_every_200_is_counted(
    full_config, full_redis, full_client, pool, clock
):
    expected = Expected()
    refused = fill(full_client, full_redis, expected)
    assert refused.status_code == 503
    before = keyspace(full_redis, full_config.key_prefix)
    size = full_redis.dbsize()
    clock.advance(100)
    for path, body in (
        ("/stats/batch", mixed_batch(expected)),
        ("/stats", payload(token="single", customer="new")),
    ):
        response = full_client.post(path, json=body)
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
    assert full_redis.dbsize() == size
    assert keyspace(full_redis, full_config.key_prefix) == before

    # Counting is checked here; draining a full Redis is the subject of the tests below.
    full_redis.config_set("maxmemory", 0)
    clock.now = END + GRACE
    report = flush_once(full_redis, pool, full_config, clock)
    assert report.rows == len(expected.rows)
    assert stats_table(pool) == expected.rows


def test_a_full_buffer_answers_buffer_full_with_retry_after_until_the_window_end(
    full_config, full_redis, full_client, clock
):
    expected = Expected()
    refused = fill(full_client, full_redis, expected)
    before = keyspace(full_redis, full_config.key_prefix)
    # Retry-After: whole seconds until the current window's end plus the grace.
    assert END + GRACE - clock.now == 304
    for advance, path, body in (
        (0, "/stats/batch", mixed_batch(expected)),
        (100, "/stats", payload(token="single", customer="new")),
    ):
        clock.advance(advance)
        response = full_client.post(path, json=body)
        assert response.status_code == 503
        assert response.get_json() == {"error": "buffer_full", "message": BUFFER_FULL_MESSAGE}
        assert response.headers["Retry-After"] == str(math.ceil(END + GRACE - clock.now))
    assert response.headers["Retry-After"] == "204"
    assert refused.get_json()["error"] == "buffer_full"
    assert keyspace(full_redis, full_config.key_prefix) == before


# --- readiness, metrics and the drain -----------------------------------------------------------


def test_a_full_redis_is_not_ready_and_says_so_on_metrics(
    full_config, full_redis, full_client, clock
):
    # Empty, this Redis uses about 70% of its maxmemory: ready at the default
    # STATS_REDIS_MEMORY_READY_RATIO of 0.9, not at 0.5.
    assert full_client.get("/readyz").status_code == 200
    strict = create_app(replace(full_config, redis_memory_ready_ratio=0.5), clock=clock)
    ready = strict.test_client().get("/readyz")
    assert (ready.status_code, ready.get_json()["checks"]["redis_memory"]) == (503, "full")

    fill(full_client, full_redis, Expected())
    state = memory_state(full_redis)
    assert state.used_bytes >= state.max_bytes * full_config.redis_memory_ready_ratio
    ready = full_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json() == {
        "error": "not_ready",
        "message": "Not ready: redis_memory.",
        "checks": {"redis": "ok", "redis_eviction": "ok", "redis_memory": "full", "postgres": "ok"},
    }
    scraped = full_client.get("/metrics").get_data(as_text=True)
    assert metric(scraped, "payload_stats_redis_memory_used_ratio") >= 0.9
    assert metric(scraped, "payload_stats_redis_memory_max_bytes") == state.max_bytes


def test_flush_with_lock_drains_a_full_redis_then_ingest_answers_200(
    full_config, full_redis, full_client, pool, clock, caplog
):
    caplog.set_level(logging.INFO)
    expected = Expected()
    fill(full_client, full_redis, expected)
    state = memory_state(full_redis)

    # The window closes: the flush goes on without its lock (a full Redis refuses
    # the lock's SET) and moves everything into PostgreSQL.
    clock.now = END + GRACE
    report = flush_with_lock(full_redis, pool, full_config, clock)
    assert report is not None
    assert [w.written.rows for w in report.windows] == [len(expected.rows)]
    assert any(r.getMessage() == "flush_lock_unavailable" for r in caplog.records)
    assert stats_table(pool) == expected.rows
    assert memory_state(full_redis).used_bytes < 0.9 * state.max_bytes
    assert full_client.get("/readyz").status_code == 200

    late = payload(token="after", customer="after", content="drain", cdn=5, p2p=6, timespan=7)
    response = full_client.post("/stats", json=late)
    assert (response.status_code, response.get_json()) == (200, {"accepted": 1, "duplicates": 0})
    expected.add(END + 300, late)
    clock.now = END + 300 + GRACE
    flush_once(full_redis, pool, full_config, clock)
    assert stats_table(pool) == expected.rows


def test_the_flush_command_drains_a_full_redis(full_config, full_redis, pool, tmp_path):
    config = replace(full_config, window_seconds=1, flush_grace_seconds=0, data_dir=str(tmp_path))
    at = math.floor(time.time()) - 600 + 0.25
    expected = Expected(window_seconds=1)
    fill(
        create_app(config, clock=lambda: at).test_client(), full_redis, expected, math.floor(at) + 1
    )

    flushed = run_cli(environment(config, STATS_LOG_LEVEL="WARNING"), "flush")
    assert flushed.returncode == 0, flushed.stderr
    assert stats_table(pool) == expected.rows
    assert memory_state(full_redis).used_bytes < memory_state(full_redis).max_bytes


def test_a_full_redis_drains_even_when_the_first_closed_window_frees_too_little(
    full_config, full_redis, full_client, pool, clock
):
    expected = Expected()
    small = [
        payload(token=f"small-{i}", customer="small", content=f"w{i}", cdn=i + 1, timespan=i)
        for i in range(4)
    ]
    response = full_client.post("/stats/batch", json=small)
    assert (response.status_code, response.get_json()) == (200, {"accepted": 4, "duplicates": 0})
    for body in small:
        expected.add(END, body)
    clock.now = END + 1  # the next window takes (almost) all the memory
    fill(full_client, full_redis, expected, end=END + 300)

    # The small window closes first: flushing it cannot bring Redis under maxmemory.
    clock.now = END + GRACE
    flush_once(full_redis, pool, full_config, clock)
    clock.now = END + 300 + GRACE
    flush_once(full_redis, pool, full_config, clock)
    assert stats_table(pool) == expected.rows
    assert memory_state(full_redis).used_bytes < 0.9 * memory_state(full_redis).max_bytes
    late = payload(token="after", customer="after", content="drain")
    assert full_client.post("/stats", json=late).status_code == 200

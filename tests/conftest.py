"""Shared fixtures.

Integration tests talk to real servers: ``TEST_REDIS_URL`` and
``TEST_DATABASE_URL`` when set (CI sets them to the machine's servers);
otherwise an embedded Redis and PostgreSQL (the ``embedded`` extra) started
once for the whole run. Each test gets its own Redis key prefix and its own
PostgreSQL schema, both removed afterwards, so tests never see each other's
data and never touch anything else on the servers.

``config`` has 4 shards; a test whose outcome depends on the count runs with
1 and 4 (``shard_counts``). What tests share beyond fixtures -- the reference
model of the rules, process helpers, readers of Redis and PostgreSQL -- is in
``tests/support``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from redis import Redis

from payload_stats.buffer.connection import redis_client
from payload_stats.config import Config
from payload_stats.ops.embedded import EmbeddedServers
from payload_stats.postgres import partitions, writes
from payload_stats.postgres.migrations import migrate
from payload_stats.postgres.pool import connection, database_pool
from payload_stats.web.app import create_app
from tests.support.servers import with_search_path

# A fixed, realistic instant: 2026-11-26T10:00:00Z plus 1 s, in window
# 5_985_624 of 300 s. Tests move it explicitly; nothing depends on real time.
START = 1_795_687_201.0


class FakeClock:
    """An injectable clock: ``clock()`` returns ``clock.now``."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def payload(**overrides):
    """A valid payload; keyword arguments replace fields."""
    body = {
        "token": "token-1",
        "customer": "acme",
        "content": "movie-1",
        "timespan": 30000,
        "p2p": 100,
        "cdn": 250,
        "sessionDuration": 1200,
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[Config]:
    """A Config holding the URLs of the servers under test (started if need be)."""
    config = Config(
        redis_url=os.environ.get("TEST_REDIS_URL") or None,
        database_url=os.environ.get("TEST_DATABASE_URL") or None,
        data_dir=str(tmp_path_factory.mktemp("embedded")),
    )
    with EmbeddedServers(config) as started:
        yield started.config


@pytest.fixture(scope="session")
def redis_url(servers: Config) -> str:
    return servers.redis_url


@pytest.fixture(scope="session")
def database_url(servers: Config) -> str:
    return servers.database_url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    r = Redis.from_url(redis_url)
    try:
        for batch in _batches(r.scan_iter(match=f"{prefix}:*", count=1000), 500):
            r.delete(*batch)
    finally:
        r.close()


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture
def pg_schema(database_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema; yields DATABASE_URL pointing into it."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(database_url, schema)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


@pytest.fixture
def shards(request) -> int:
    """STATS_SHARDS of ``config``: 4, unless a test asks for other counts with
    ``shard_counts`` (or its own ``@pytest.mark.parametrize("shards", ...)``)."""
    return getattr(request, "param", 4)


# For the tests whose outcome depends on the number of shards: sums across
# shards, batches spanning shards, the flusher walking shards, concurrency.
shard_counts = pytest.mark.parametrize("shards", [1, 4], ids=["1shard", "4shards"], indirect=True)


@pytest.fixture
def config(redis_url: str, pg_schema: str, key_prefix: str, shards: int) -> Config:
    return Config(
        redis_url=redis_url,
        database_url=pg_schema,
        window_seconds=300,
        flush_grace_seconds=5,
        shards=shards,
        key_prefix=key_prefix,
        flush_batch_size=7,  # small, so tests cross batch boundaries
        flush_chunk_rows=20,  # and windows are added in several chunks
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis(config: Config) -> Iterator[Redis]:
    client = redis_client(config)
    yield client
    client.close()


@pytest.fixture
def pool(config: Config):
    p = database_pool(config)
    migrate(p)
    yield p
    p.closeall()


@pytest.fixture
def app(config: Config, clock: FakeClock):
    return create_app(config, clock=clock)


@pytest.fixture
def client(app):
    return app.test_client()


def write_rows(pool, rows) -> None:
    """Add rows (time, customer, content, cdn, p2p, sessions, payloads[, watch_ms])
    into ``stats`` and its rollups through the service's write path (the one
    imports use), in one transaction: tests that need many rows at chosen
    times use it instead of an INSERT, which would miss the rollups (and the
    partitions, docs/stats-table.md)."""
    rows = [tuple(r) + (0,) * (8 - len(r)) for r in rows]
    with connection(pool) as conn:
        partitions.ensure(conn, {partitions.day_of(r[0]) for r in rows})
        with conn:
            writes.start_staging(conn)
            writes.stage_history(conn, rows)
            writes.upsert(conn, None, [], isolate_overflow=False)


def stats_rows(pool) -> dict[tuple, tuple[int, int, int]]:
    """{(window end as unix seconds, customer, content): (cdn, p2p, sessions)}."""
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM time)::bigint, customer, content, cdn, p2p, sessions "
            "FROM stats"
        )
        rows = cur.fetchall()
        conn.rollback()
    return {(t, cu, co): (cdn, p2p, s) for t, cu, co, cdn, p2p, s in rows}

"""Request bodies without Content-Length, and the content types ingest accepts.

Against a real ``payload-stats web`` (gunicorn, one worker) with
STATS_MAX_BODY_BYTES=4096: a chunked body past the limit is refused whole (413,
JSON) and writes nothing; one within it is read whole and counted exactly.
Every request here uses names of its own; what it counted is read back from
Redis and, at the end, from PostgreSQL after a flush.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg2
import pytest

from payload_stats.buffer.connection import redis_client
from payload_stats.buffer.live import top_rows
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.postgres.migrations import migrate
from payload_stats.postgres.pool import database_pool
from tests.conftest import payload, with_search_path
from tests.integration.test_exactness_support import (
    WebProcess,
    environment,
    keyspace,
    stats_table,
)

LIMIT = 4096
NDJSON = {"Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked"}


@pytest.fixture(scope="module")
def served(redis_url, database_url, tmp_path_factory) -> Iterator[tuple[WebProcess, Config]]:
    """One web process for the module, on a key prefix and schema of its own."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    tmp = tmp_path_factory.mktemp("bodies")
    config = Config(
        redis_url=redis_url,
        database_url=with_search_path(database_url, schema),
        key_prefix=f"test-{uuid.uuid4().hex[:12]}",
        shards=4,
        max_body_bytes=LIMIT,
        data_dir=str(tmp),
    )
    web = WebProcess(environment(config), tmp / "web.log")
    redis = redis_client(config)
    try:
        web.wait_ready()
        yield web, config
    finally:
        code = web.stop()
        print(web.output())
        keys = list(redis.scan_iter(match=f"{config.key_prefix}:*"))
        if keys:
            redis.delete(*keys)
        redis.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()
    assert code == 0


@pytest.fixture
def redis(served):
    client = redis_client(served[1])
    yield client
    client.close()


def ndjson(customer: str, count: int, pad: int = 0) -> bytes:
    lines = [
        json.dumps(payload(token=f"{customer}-{i}", customer=customer, content="c", cdn=100 + i,
                           p2p=i, timespan=10 * i, sessionDuration=1000 + i))
        for i in range(count)
    ]  # fmt: skip
    return ("\n".join(lines) + "\n" * (1 + pad)).encode()


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def counted(redis, config, customer: str) -> tuple[int, int, int, int, int] | None:
    """(cdn, p2p, sessions, payloads, watch_ms) buffered for ``customer``, all windows."""
    rows = top_rows(redis, config, customer=customer, limit=None).rows
    if not rows:
        return None
    return tuple(
        sum(getattr(r, name) for r in rows)
        for name in ("cdn", "p2p", "sessions", "payloads", "watch_ms")
    )


def expected(count: int) -> tuple[int, int, int, int, int]:
    return (
        sum(100 + i for i in range(count)),
        sum(range(count)),
        count,
        count,
        sum(10 * i for i in range(count)),
    )


# --- chunked bodies -----------------------------------------------------------------------------


def test_a_chunked_body_past_the_limit_is_413_and_writes_nothing(served, redis):
    web, config = served
    body = ndjson("chunk-big", 40)
    assert len(body) > LIMIT
    before = keyspace(redis, config.key_prefix)
    status, headers, answer = web.request(
        "POST", "/stats/batch", chunks(body), NDJSON, chunked=True
    )
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert answer == {
        "error": "request_entity_too_large",
        "message": f"The body is larger than {LIMIT} bytes.",
    }
    assert keyspace(redis, config.key_prefix) == before
    assert counted(redis, config, "chunk-big") is None


@pytest.mark.parametrize("extra", [0, 1], ids=["at-the-limit", "one-byte-past"])
def test_the_limit_of_a_chunked_body_is_exact(served, redis, extra):
    web, config = served
    customer = f"chunk-edge-{extra}"
    body = ndjson(customer, 20)
    body += b"\n" * (LIMIT + extra - len(body))  # blank lines are skipped, not payloads
    assert len(body) == LIMIT + extra
    status, _, answer = web.request("POST", "/stats/batch", chunks(body, 333), NDJSON, chunked=True)
    if extra:
        assert (status, answer["error"]) == (413, "request_entity_too_large")
        assert counted(redis, config, customer) is None
    else:
        assert (status, answer) == (200, {"accepted": 20, "duplicates": 0})
        assert counted(redis, config, customer) == expected(20)


def test_chunked_bodies_within_the_limit_are_counted_exactly(served, redis):
    web, config = served
    body = ndjson("chunk-ok", 20)
    assert len(body) < LIMIT
    status, _, answer = web.request("POST", "/stats/batch", chunks(body, 100), NDJSON, chunked=True)
    assert (status, answer) == (200, {"accepted": 20, "duplicates": 0})
    assert counted(redis, config, "chunk-ok") == expected(20)

    single = json.dumps(payload(token="chunk-one", customer="chunk-one", cdn=5, p2p=6, timespan=7))
    status, _, answer = web.request(
        "POST",
        "/stats",
        chunks(single.encode(), 16),
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        chunked=True,
    )
    assert (status, answer) == (200, {"accepted": 1, "duplicates": 0})
    assert counted(redis, config, "chunk-one") == (5, 6, 1, 1, 7)


# --- content types ------------------------------------------------------------------------------

TEXT = "Content-Type 'text/plain' is not accepted here; "
JSON_ONLY = "send application/json."
EITHER = "send application/json or application/x-ndjson."


@pytest.mark.parametrize(
    ("path", "content_type", "status", "message"),
    [
        ("/stats", "text/plain", 415, TEXT + JSON_ONLY),
        ("/stats", "application/json; charset=latin-1", 415,
         "charset 'latin-1' is not accepted; send UTF-8."),
        ("/stats", "application/json; charset=utf-8", 200, None),
        ("/stats", None, 200, None),
        ("/stats", "application/x-ndjson", 415,
         f"Content-Type 'application/x-ndjson' is not accepted here; {JSON_ONLY}"),
        ("/stats/batch", "application/x-ndjson", 200, None),
        ("/stats/batch", "text/plain", 415, TEXT + EITHER),
    ],
    ids=["stats-text", "stats-latin1", "stats-utf8", "stats-none", "stats-ndjson", "batch-ndjson",
         "batch-text"],
)  # fmt: skip
def test_content_types(served, redis, path, content_type, status, message):
    web, config = served
    customer = f"type-{uuid.uuid4().hex[:8]}"
    body = payload(token=customer, customer=customer, cdn=41, p2p=1, timespan=2)
    data = json.dumps(body).encode() + (b"\n" if path == "/stats/batch" else b"")
    headers = {} if content_type is None else {"Content-Type": content_type}
    before = keyspace(redis, config.key_prefix)
    got, _, answer = web.request("POST", path, data, headers)
    if status == 200:
        assert (got, answer) == (200, {"accepted": 1, "duplicates": 0})
        assert counted(redis, config, customer) == (41, 1, 1, 1, 2)
    else:
        assert (got, answer) == (415, {"error": "unsupported_media_type", "message": message})
        assert keyspace(redis, config.key_prefix) == before


# --- and in PostgreSQL --------------------------------------------------------------------------


def test_what_was_accepted_reaches_postgresql_exactly(served, redis):
    """A chunked batch, then a flush of everything buffered (the tests above too)."""
    web, config = served
    body = ndjson("chunk-pg", 25)
    status, _, answer = web.request("POST", "/stats/batch", chunks(body, 512), NDJSON, chunked=True)
    assert (status, answer) == (200, {"accepted": 25, "duplicates": 0})
    names = ("chunk-pg", "chunk-ok", "chunk-one", "chunk-edge-0", "chunk-big", "chunk-edge-1")
    buffered = {customer: counted(redis, config, customer) for customer in names}
    assert buffered["chunk-pg"] == expected(25)
    pool = database_pool(config)
    try:
        migrate(pool)
        later = replace(config, flush_grace_seconds=0)
        flush_once(redis, pool, later, lambda: time.time() + 2 * config.window_seconds)
        rows = stats_table(pool)
    finally:
        pool.closeall()
    for customer, sums in buffered.items():
        found = [v for (_, cu, _), v in rows.items() if cu == customer]
        assert (tuple(map(sum, zip(*found, strict=True))) if found else None) == sums
    assert top_rows(redis, config, limit=None).rows == []

"""A private Redis key prefix and PostgreSQL schema for one harness run.

Nothing outside them is touched: keys are deleted by prefix (SCAN, never
FLUSHDB) and the schema is dropped when the run ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg2
from redis import Redis

from tests.support.servers import with_search_path

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def new_prefix() -> str:
    """A short unique key prefix (its length is paid in every key's memory)."""
    return f"bx{uuid.uuid4().hex[:4]}"


def delete_prefix(redis: Redis, prefix: str) -> int:
    """Delete every key under ``prefix:``; returns how many."""
    deleted = 0
    batch: list[bytes] = []
    for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            deleted += redis.unlink(*batch)
            batch = []
    if batch:
        deleted += redis.unlink(*batch)
    return deleted


class Schema:
    """A PostgreSQL schema created now and dropped by ``drop``."""

    def __init__(self, database_url: str, name: str | None = None) -> None:
        self.database_url = database_url
        self.name = name or f"bench_{uuid.uuid4().hex[:10]}"
        self._execute(f'CREATE SCHEMA "{self.name}"')

    @property
    def url(self) -> str:
        return with_search_path(self.database_url, self.name)

    def _execute(self, statement: str) -> None:
        conn = psycopg2.connect(self.database_url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def drop(self) -> None:
        self._execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


def scan_keys(redis: Redis, prefix: str) -> Iterator[bytes]:
    return redis.scan_iter(match=f"{prefix}:*", count=1000)

"""PostgreSQL: the connection pool, the SQL files and the migrations runner."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources

import psycopg2
import psycopg2.extensions
from psycopg2.pool import ThreadedConnectionPool

logger = logging.getLogger(__name__)

# Fail fast when PostgreSQL is down instead of waiting for the OS timeout.
CONNECT_TIMEOUT_SECONDS = 5
# Any 64-bit constant that no other application is likely to pick.
MIGRATION_LOCK_ID = 0x5041594C4F4144  # "PAYLOAD"

Connection = psycopg2.extensions.connection


def create_pool(database_url: str, maxconn: int = 4) -> ThreadedConnectionPool:
    """A pool that connects lazily: creating it never touches the network."""
    return ThreadedConnectionPool(
        0, maxconn, database_url, connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name="payload-stats",
    )


@contextmanager
def connection(pool: ThreadedConnectionPool) -> Iterator[Connection]:
    """A pooled connection; one that broke is closed instead of reused.

    Raises psycopg2.OperationalError when PostgreSQL cannot be reached.
    """
    conn = pool.getconn()
    try:
        yield conn
    except BaseException:
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                pass
        raise
    finally:
        pool.putconn(conn, close=bool(conn.closed))


@cache
def sql(name: str) -> str:
    """The text of ``app/sql/<name>.sql``."""
    return resources.files("app").joinpath("sql", f"{name}.sql").read_text("utf-8")


def migrations() -> list[tuple[int, str, str]]:
    """The versioned migrations shipped with the package: (version, name, sql)."""
    found = []
    for entry in resources.files("app").joinpath("sql", "migrations").iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found)


def migrate(pool: ThreadedConnectionPool) -> list[str]:
    """Apply every migration not applied yet; idempotent and safe to run concurrently.

    Returns the names of the migrations applied now. Raises psycopg2.Error.
    """
    applied_now = []
    with connection(pool) as conn:
        with conn, conn.cursor() as cur:
            # Serialises concurrent starts (web, scheduler, init-db) on one database.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            cur.execute(sql("create_migrations_table"))
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
            for version, name, text in migrations():
                if version in done:
                    continue
                cur.execute(text)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied_now.append(f"{version:04d}_{name}")
    for name in applied_now:
        logger.info("migration_applied", extra={"migration": name})
    return applied_now

"""The PostgreSQL connection pool and its borrowed connections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
from psycopg2.pool import ThreadedConnectionPool

from ..config import Config, ConfigError

# Fail fast when PostgreSQL is down instead of waiting for the OS timeout.
CONNECT_TIMEOUT_SECONDS = 5

Connection = psycopg2.extensions.connection


def create_pool(database_url: str, maxconn: int = 4) -> ThreadedConnectionPool:
    """A pool that connects lazily: creating it never touches the network."""
    return ThreadedConnectionPool(
        0,
        maxconn,
        database_url,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name="payload-stats",
    )


def database_pool(config: Config, maxconn: int = 4) -> ThreadedConnectionPool:
    """The pool of ``config.database_url``. Raises ConfigError when it is not set."""
    if not config.database_url:
        raise ConfigError("DATABASE_URL is not set")
    return create_pool(config.database_url, maxconn)


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

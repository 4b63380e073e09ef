"""The PostgreSQL connection pool and its borrowed connections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
from psycopg2.errors import LockNotAvailable, QueryCanceled
from psycopg2.pool import ThreadedConnectionPool

from ..config import Config, ConfigError

# Fail fast when PostgreSQL is down instead of waiting for the OS timeout.
CONNECT_TIMEOUT_SECONDS = 5

Connection = psycopg2.extensions.connection


# A dead peer (a partition, a host gone) is noticed within about 20 s even
# when PostgreSQL's own timeouts cannot fire: TCP keepalives.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
}


class Pool(ThreadedConnectionPool):
    """A pool that connects lazily (creating it never touches the network) and
    keeps the connections it is given back, up to ``maxconn``, for the next
    borrower: psycopg2 closes every connection returned beyond ``minconn``, so
    with ``minconn=0`` each request would pay a new connection (~10 ms)."""

    def __init__(self, maxconn: int, *args, **kwargs) -> None:
        super().__init__(0, maxconn, *args, **kwargs)  # no connection now
        self.minconn = maxconn  # only read when a connection is returned


def create_pool(
    database_url: str,
    maxconn: int = 4,
    *,
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
) -> ThreadedConnectionPool:
    """A lazy pool of at most ``maxconn`` connections, reused (``Pool``).

    With timeouts, every statement of every connection of the pool has them
    (libpq ``options``, added to any the URL already holds): a statement that
    runs, or waits for a lock, longer is cancelled with QueryCanceled or
    LockNotAvailable.
    """
    extra = {}
    settings = [
        f"-c {name}={value}"
        for name, value in (
            ("statement_timeout", statement_timeout_ms),
            ("lock_timeout", lock_timeout_ms),
        )
        if value is not None
    ]
    if settings:
        given = psycopg2.extensions.parse_dsn(database_url).get("options", "")
        extra["options"] = " ".join([given, *settings]).strip()
    return Pool(
        maxconn,
        database_url,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name="payload-stats",
        **KEEPALIVES,
        **extra,
    )


def database_pool(config: Config, maxconn: int = 4) -> ThreadedConnectionPool:
    """The pool of ``config.database_url``, without statement or lock timeouts
    (migrations, tests). Raises ConfigError when it is not set."""
    if not config.database_url:
        raise ConfigError("DATABASE_URL is not set")
    return create_pool(config.database_url, maxconn)


def web_pool(config: Config, maxconn: int) -> ThreadedConnectionPool:
    """The pool of the request path: STATS_PG_STATEMENT_TIMEOUT_MS and
    STATS_PG_LOCK_TIMEOUT_MS on every statement, so a slow or locked table
    answers 503 instead of holding a web thread."""
    if not config.database_url:
        raise ConfigError("DATABASE_URL is not set")
    return create_pool(
        config.database_url,
        maxconn,
        statement_timeout_ms=config.pg_statement_timeout_ms,
        lock_timeout_ms=config.pg_lock_timeout_ms,
    )


def flush_pool(config: Config, maxconn: int = 2) -> ThreadedConnectionPool:
    """The pool of the flush and retention: their statements give up (and the
    run is retried later) instead of waiting on a lock for ever, and end well
    before the flusher's Redis lock expires (``Config.flush_pg_timeouts_ms``)."""
    if not config.database_url:
        raise ConfigError("DATABASE_URL is not set")
    statement_ms, lock_ms = config.flush_pg_timeouts_ms
    return create_pool(
        config.database_url, maxconn, statement_timeout_ms=statement_ms, lock_timeout_ms=lock_ms
    )


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a statement or lock timeout (PostgreSQL gave up waiting)."""
    return isinstance(exc, (QueryCanceled, LockNotAvailable))


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

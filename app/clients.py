"""Building the Redis client and the PostgreSQL pool from the configuration.

Called after fork (in each gunicorn worker, in the scheduler process), never
at import time.
"""

from __future__ import annotations

from psycopg2.pool import ThreadedConnectionPool
from redis import Redis

from . import db
from .config import Config, ConfigError


def redis_client(config: Config) -> Redis:
    """A Redis client with bounded timeouts, so no request hangs on a dead server."""
    if not config.redis_url:
        raise ConfigError("REDIS_URL is not set")
    return Redis.from_url(
        config.redis_url,
        socket_timeout=config.redis_timeout_seconds,
        socket_connect_timeout=config.redis_timeout_seconds,
        health_check_interval=30,
    )


def database_pool(config: Config, maxconn: int = 4) -> ThreadedConnectionPool:
    if not config.database_url:
        raise ConfigError("DATABASE_URL is not set")
    return db.create_pool(config.database_url, maxconn)

"""The Redis client, built from the configuration.

Called after fork (in each gunicorn worker, in the scheduler process), never
at import time.
"""

from __future__ import annotations

from redis import Redis

from ..config import Config, ConfigError


def redis_client(config: Config) -> Redis:
    """A Redis client with bounded timeouts, so no request hangs on a dead server.

    Raises ConfigError when REDIS_URL is not set.
    """
    if not config.redis_url:
        raise ConfigError("REDIS_URL is not set")
    return Redis.from_url(
        config.redis_url,
        socket_timeout=config.redis_timeout_seconds,
        socket_connect_timeout=config.redis_timeout_seconds,
        health_check_interval=30,
    )

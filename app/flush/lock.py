"""The flusher lock: one flusher at a time saves work; the ledger keeps counts exact."""

from __future__ import annotations

import logging
import time

from psycopg2.pool import ThreadedConnectionPool
from redis import Redis
from redis.exceptions import LockError, RedisError, ResponseError

from ..buffer.keys import Keys
from ..buffer.memory import is_out_of_memory
from ..buffer.scripts import Scripts
from ..config import Config
from ..logs import one_line
from .failpoints import Failpoint, no_failpoint
from .flusher import Clock, FlushReport, flush_once

logger = logging.getLogger(__name__)


def flush_with_lock(
    redis: Redis,
    pool: ThreadedConnectionPool,
    config: Config,
    clock: Clock = time.time,
    *,
    wait_seconds: float = 0.0,
    scripts: Scripts | None = None,
    failpoint: Failpoint = no_failpoint,
) -> FlushReport | None:
    """``flush_once`` under the flusher lock; None if another flusher holds it.

    The lock (redis-py ``Lock``, owned by a random token) is extended between
    batches and only ever released by its owner. Losing it mid-flush is
    logged and harmless: the ledger keeps a concurrent flush exact.
    """
    lock = redis.lock(
        Keys(config.key_prefix).flush_lock(),
        timeout=config.flush_lock_seconds,
        blocking=wait_seconds > 0,
        blocking_timeout=wait_seconds or None,
        thread_local=False,
    )
    try:
        acquired = lock.acquire()
    except ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        # A full Redis refuses the lock's SET, yet only a flush frees memory: go
        # on without it (docs/exactly-once.md, "The lock only saves work").
        logger.warning("flush_lock_unavailable", extra={"reason": one_line(exc)})
        return flush_once(redis, pool, config, clock, scripts=scripts, failpoint=failpoint)
    if not acquired:
        logger.info("flush_skipped", extra={"reason": "lock held by another flusher"})
        return None
    lost = False

    def extend() -> None:
        nonlocal lost
        if lost:
            return
        try:
            lock.extend(config.flush_lock_seconds, replace_ttl=True)
        except LockError:
            lost = True
            logger.warning("flush_lock_lost")

    try:
        return flush_once(
            redis,
            pool,
            config,
            clock,
            scripts=scripts,
            failpoint=failpoint,
            on_progress=extend,
        )
    finally:
        if not lost:
            try:
                lock.release()
            except LockError:
                logger.warning("flush_lock_lost")
            except RedisError:
                pass  # Redis is down: the lock expires on its own

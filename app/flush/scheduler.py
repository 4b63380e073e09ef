"""The flush scheduler: the only place APScheduler is started.

It runs in its own process (``payload-stats scheduler``), never inside
gunicorn workers, so N web workers do not mean N flushers.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg2
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from psycopg2.pool import ThreadedConnectionPool
from redis import Redis
from redis.exceptions import RedisError

from .. import deployment
from ..buffer.scripts import Scripts
from ..config import Config
from ..logs import one_line
from ..postgres import partitions
from ..postgres.migrations import migrate
from ..postgres.pool import is_timeout
from ..postgres.quarantine import count_unresolved
from . import retention
from .failpoints import Failpoint, no_failpoint
from .figures import record_flush
from .flusher import Clock
from .lock import flush_with_lock

logger = logging.getLogger(__name__)

#: A retention run that gave up (a lock or statement timeout) is tried again after this.
RETENTION_RETRY = timedelta(minutes=10)


class FlushJob:
    """One scheduled run: make sure the schema exists and the settings are the
    deployment's, then flush under the lock.

    Failures are logged and retried at the next run; Redis keeps the data.
    """

    def __init__(
        self,
        redis: Redis,
        pool: ThreadedConnectionPool,
        config: Config,
        clock: Clock = time.time,
        failpoint: Failpoint = no_failpoint,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.config = config
        self.clock = clock
        self.failpoint = failpoint
        self.scripts = Scripts(redis)
        self.schema_ready = False

    def __call__(self) -> None:
        try:
            if not self.schema_ready:
                migrate(self.pool)
                self.schema_ready = True
            # Every run: another process may have recorded settings since.
            deployment.check(self.redis, self.pool, self.config)
            report = flush_with_lock(
                self.redis,
                self.pool,
                self.config,
                self.clock,
                scripts=self.scripts,
                failpoint=self.failpoint,
            )
            isolated = count_unresolved(self.pool)
        except (psycopg2.Error, RedisError, deployment.DeploymentError) as exc:
            # A lock or statement timeout (``postgres.pool.flush_pool``) lands here
            # too: the flush gave up, its lock is released, the next run retries.
            logger.error(
                "flush_failed",
                extra={"reason": one_line(exc), "timeout": is_timeout(exc)},
            )
            record_flush(self.redis, self.config, ok=False)
        except Exception:
            logger.exception("flush_failed")
            record_flush(self.redis, self.config, ok=False)
        else:
            if report is not None:
                record_flush(
                    self.redis,
                    self.config,
                    ok=True,
                    rows=report.rows,
                    watch_ms=report.total("watch_ms"),
                    duration=report.duration_seconds,
                    quarantined=isolated,
                )


class PartitionJob:
    """At start and every hour: create the partitions of today and the next
    STATS_PARTITION_AHEAD_DAYS days, so no flush has to create one."""

    def __init__(
        self, pool: ThreadedConnectionPool, config: Config, clock: Clock = time.time
    ) -> None:
        self.pool = pool
        self.config = config
        self.clock = clock

    def __call__(self) -> None:
        try:
            created = partitions.ensure_ahead(
                self.pool, self.clock(), self.config.partition_ahead_days
            )
        except psycopg2.Error as exc:
            # Not fatal: a flush creates the partition it needs itself.
            logger.error("partitions_failed", extra={"reason": one_line(exc)})
            return
        if created:
            logger.info("partitions_created", extra={"partitions": created})


class RetentionJob:
    """Once a day: drop the day partitions older than STATS_RETENTION_DAYS.

    A run that fails (PostgreSQL down, or a lock it gave up waiting for) logs
    ``retention_failed`` and calls ``retry`` (``build_scheduler`` makes it run
    again after RETENTION_RETRY); the days it dropped stay dropped, and the
    next run completes a day it left half-way.
    """

    def __init__(
        self,
        pool: ThreadedConnectionPool,
        config: Config,
        clock: Clock = time.time,
        retry: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.config = config
        self.clock = clock
        self.retry = retry

    def __call__(self) -> None:
        try:
            retention.prune(self.pool, self.config.retention_days, self.clock())
        except psycopg2.Error as exc:
            logger.error(
                "retention_failed",
                extra={
                    "reason": one_line(exc),
                    "timeout": is_timeout(exc),
                    "retry_in_s": int(RETENTION_RETRY.total_seconds()),
                },
            )
            self.retry()


def build_scheduler(
    job: FlushJob,
    config: Config,
    retention_job: RetentionJob | None = None,
    partition_job: PartitionJob | None = None,
) -> BackgroundScheduler:
    """A scheduler running ``job`` every ``STATS_FLUSH_INTERVAL_SECONDS`` (first run
    now), ``partition_job`` every hour (first run a few seconds after start)
    and ``retention_job`` once a day (first run a minute after start)."""
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(
        job,
        IntervalTrigger(seconds=config.flush_interval_seconds),
        id="flush",
        name="flush closed windows",
        # One flush at a time in this process; runs missed while one was
        # slow collapse into one, which flushes everything closed anyway.
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(60, int(config.flush_interval_seconds * 10)),
        next_run_time=datetime.now(timezone.utc),
    )
    if partition_job is not None:
        scheduler.add_job(
            partition_job,
            IntervalTrigger(hours=1),
            id="partitions",
            name="create the coming days' stats partitions",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
            next_run_time=datetime.now(timezone.utc) + timedelta(seconds=5),
        )
    if retention_job is not None and config.retention_days > 0:
        scheduler.add_job(
            retention_job,
            IntervalTrigger(days=1),
            id="retention",
            name="drop old stats partitions",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
            next_run_time=datetime.now(timezone.utc) + timedelta(minutes=1),
        )

        def retry() -> None:
            scheduler.add_job(
                retention_job,
                DateTrigger(datetime.now(timezone.utc) + RETENTION_RETRY),
                id="retention-retry",
                name="drop old stats partitions (retry)",
                replace_existing=True,
            )

        retention_job.retry = retry
    return scheduler


def run(
    redis: Redis,
    pool: ThreadedConnectionPool,
    config: Config,
    failpoint: Failpoint = no_failpoint,
) -> None:
    """Run the scheduler until SIGTERM or SIGINT; a running flush completes first."""
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scheduler = build_scheduler(
        FlushJob(redis, pool, config, failpoint=failpoint),
        config,
        RetentionJob(pool, config),
        PartitionJob(pool, config),
    )
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        if not stopping.is_set():
            logger.info("scheduler_stopping", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info(
        "scheduler_started",
        extra={
            "interval_s": config.flush_interval_seconds,
            "window_s": config.window_seconds,
            "grace_s": config.flush_grace_seconds,
            "shards": config.shards,
        },
    )
    scheduler.start()
    stopping.wait()
    scheduler.shutdown(wait=True)
    logger.info("scheduler_stopped")

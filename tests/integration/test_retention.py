"""Retention: dropping the day partitions of ``stats`` older than STATS_RETENTION_DAYS.

``stats`` is partitioned by UTC day (docs/stats-table.md, "Partitions"). Rows
are written at known instants around the cut-off (the UTC midnight at or
before ``now`` - days) through the write path, so their partitions and
rollups exist; after ``prune`` exactly the days before the cut must be gone
(rows, partitions, rollup rows and ledger rows) and every other row must be
untouched, rollups included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import psycopg2
import psycopg2.extras

from payload_stats.config import Config
from payload_stats.flush.retention import cut, prune
from payload_stats.flush.scheduler import (
    FlushJob,
    PartitionJob,
    RetentionJob,
    build_scheduler,
)
from payload_stats.postgres import partitions
from payload_stats.postgres.pool import connection, database_pool
from tests.conftest import START, FakeClock, write_rows

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/x"
NOW = datetime.fromtimestamp(START, tz=timezone.utc)  # 2026-11-26T10:00:01Z
MIDNIGHT = datetime(2026, 11, 26, tzinfo=timezone.utc)

US = timedelta(microseconds=1)
DAY = timedelta(days=1)


def insert(pool, times: Iterable[datetime], customer: str = "acme") -> None:
    write_rows(pool, [(t, f"{customer}-{i}", "movie", i, i, 1, 1, 10) for i, t in enumerate(times)])


def remaining(pool) -> set[tuple[datetime, str]]:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT time, customer FROM stats")
        rows = {(t.astimezone(timezone.utc), cu) for t, cu in cur.fetchall()}
        conn.rollback()
    return rows


def scalar(pool, statement: str, params=None):
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        value = cur.fetchone()[0]
        conn.rollback()
    return value


def days_partitioned(pool) -> list[date]:
    with connection(pool) as conn:
        try:
            return [p.day for p in partitions.attached(conn)]
        finally:
            conn.rollback()


def ledger(pool) -> set[str]:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT snapshot_id FROM flush_ledger")
        ids = {row[0] for row in cur.fetchall()}
        conn.rollback()
    return ids


def rollup_totals(pool) -> dict[str, int]:
    """payloads summed over each rollup table."""
    return {
        table: int(scalar(pool, f"SELECT coalesce(sum(payloads), 0) FROM {table}"))
        for table in (
            "stats_hourly",
            "stats_daily",
            "stats_customer_hourly",
            "stats_customer_daily",
        )
    }


def test_the_cut_is_the_utc_midnight_at_or_before_now_minus_days():
    assert cut(START, 365) == datetime(2025, 11, 26, tzinfo=timezone.utc)
    assert cut(START, 0) == MIDNIGHT
    assert cut(MIDNIGHT.timestamp(), 1) == MIDNIGHT - DAY
    assert cut(MIDNIGHT.timestamp() - 0.001, 1) == MIDNIGHT - 2 * DAY


def test_prune_drops_exactly_the_days_before_the_cut(pool):
    before = cut(START, 365)  # 2025-11-26T00:00Z
    old = [
        before - US,
        before - timedelta(seconds=1),
        before - timedelta(minutes=5),
        before - timedelta(hours=23, minutes=55),
        before - DAY,  # the first instant of its day
        before - timedelta(days=30),
        before - timedelta(days=400),
        datetime(2001, 1, 1, tzinfo=timezone.utc),
    ]
    kept = [
        before,  # the first instant of the day of the cut
        before + US,
        NOW - timedelta(days=365),  # older than now - 365 days, but in the kept day
        NOW - timedelta(days=365) + timedelta(hours=5),
        NOW - DAY,
        NOW,
        NOW + timedelta(days=3),
    ]
    insert(pool, old, "old")
    insert(pool, kept, "kept")
    days_before = days_partitioned(pool)
    assert len(days_before) == 8

    pruned = prune(pool, 365, START)

    assert pruned.before == before
    assert pruned.rows == len(old)
    assert sorted(pruned.days) == sorted({t.date() for t in old})
    assert remaining(pool) == {(t, f"kept-{i}") for i, t in enumerate(kept)}
    assert days_partitioned(pool) == sorted({t.date() for t in kept})
    # The rollups lost exactly the dropped rows (one payload each).
    assert rollup_totals(pool) == dict.fromkeys(rollup_totals(pool), len(kept))
    assert scalar(pool, "SELECT min(bucket) FROM stats_hourly") == before
    assert scalar(pool, "SELECT min(bucket) FROM stats_daily") == before
    # No table of a dropped day is left behind, attached or not.
    assert (
        scalar(
            pool,
            "SELECT count(*) FROM pg_class WHERE relname = %s AND relnamespace = "
            "(SELECT relnamespace FROM pg_class WHERE oid = 'stats'::regclass)",
            (partitions.name_of(old[0].date()),),
        )
        == 0
    )


def test_prune_with_nothing_old(pool):
    insert(pool, [NOW - timedelta(days=d) for d in range(5)])
    pruned = prune(pool, 7, START)
    assert (pruned.rows, pruned.days) == (0, [])
    assert len(remaining(pool)) == 5


def test_prune_a_large_day(pool):
    """A partition of more rows than a batch of the old row-by-row retention
    (10,000) goes as a whole."""
    day = MIDNIGHT - timedelta(days=400)
    write_rows(
        pool,
        [(day + timedelta(seconds=7 * n), f"c{n % 7}", f"x{n}", n, 0, 0, 1) for n in range(12_500)],
    )
    insert(pool, [NOW - timedelta(days=364)])
    started = time.monotonic()
    assert prune(pool, 365, START).rows == 12_500
    assert time.monotonic() - started < 10
    assert len(remaining(pool)) == 1


def test_prune_also_drops_ledger_rows_of_the_dropped_days(pool):
    before = cut(START, 365)
    with connection(pool) as conn, conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO flush_ledger (snapshot_id, window_end, flushed_at) VALUES %s",
            [(f"old-{i}", before - timedelta(days=i) - US, NOW) for i in range(4)]
            + [(f"new-{i}", before + timedelta(days=i), NOW) for i in range(3)],
        )
    insert(pool, [before - DAY])
    assert prune(pool, 365, START).rows == 1
    assert ledger(pool) == {"new-0", "new-1", "new-2"}


def test_prune_drops_a_partition_left_detached_by_an_interrupted_run(pool):
    old = MIDNIGHT - timedelta(days=500)
    insert(pool, [old + timedelta(hours=1)], "old")
    insert(pool, [NOW], "kept")
    name = partitions.name_of(old.date())
    with connection(pool) as conn, conn, conn.cursor() as cur:
        cur.execute(f"ALTER TABLE stats DETACH PARTITION {name}")
    assert remaining(pool) == {(NOW, "kept-0")}
    prune(pool, 365, START)
    assert scalar(pool, "SELECT to_regclass(%s)", (name,)) is None


def test_detaching_does_not_block_readers_and_writers(pool, database_url, config):
    """DETACH ... CONCURRENTLY waits for a transaction that read ``stats``, but
    other sessions keep reading and writing meanwhile."""
    old = MIDNIGHT - timedelta(days=400)
    insert(pool, [old], "old")
    insert(pool, [NOW], "kept")
    reader = psycopg2.connect(config.database_url)
    other = psycopg2.connect(config.database_url)
    try:
        with reader.cursor() as cur:  # a long report, still open
            cur.execute("SELECT count(*) FROM stats")
        done = threading.Event()
        thread = threading.Thread(target=lambda: (prune(pool, 365, START), done.set()))
        thread.start()
        time.sleep(1.0)
        assert not done.is_set(), "the detach should wait for the open reader"
        with other, other.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '2s'")
            cur.execute("SELECT count(*) FROM stats WHERE time >= %s", (MIDNIGHT,))
            assert cur.fetchone()[0] == 1
        write_rows(pool, [(NOW + timedelta(minutes=5), "writer", "x", 1, 1, 1, 1)])
        reader.rollback()
        thread.join(timeout=30)
        assert done.is_set()
    finally:
        reader.close()
        other.close()
    assert {cu for _, cu in remaining(pool)} == {"kept-0", "writer"}


def test_prune_logs_what_it_dropped(pool, caplog):
    insert(pool, [NOW - timedelta(days=400), NOW - timedelta(days=367), NOW])
    with caplog.at_level(logging.INFO, logger="payload_stats.flush.retention"):
        assert prune(pool, 365, START).rows == 2
    [record] = [r for r in caplog.records if r.getMessage() == "retention"]
    assert record.levelno == logging.INFO
    assert record.deleted == 2
    assert record.partitions == 2
    assert datetime.fromisoformat(record.before) == cut(START, 365)


# --- the scheduled jobs ------------------------------------------------------------


def test_retention_job_uses_retention_days_and_the_clock(config, pool, caplog):
    clock = FakeClock(START)
    insert(
        pool,
        [
            MIDNIGHT - timedelta(days=31),
            MIDNIGHT - timedelta(days=30) - US,
            MIDNIGHT - timedelta(days=30),
            MIDNIGHT - timedelta(days=29),
        ],
    )
    job = RetentionJob(pool, replace(config, retention_days=30), clock)
    with caplog.at_level(logging.INFO, logger="payload_stats.flush.retention"):
        job()
    assert {cu for _, cu in remaining(pool)} == {"acme-2", "acme-3"}
    assert [r.deleted for r in caplog.records if r.getMessage() == "retention"] == [2]
    # A day later, the day of the row exactly 30 days before midnight is older.
    clock.advance(86400)
    job()
    assert {cu for _, cu in remaining(pool)} == {"acme-3"}


def test_retention_job_with_postgres_down_logs_and_does_not_raise(config, caplog):
    broken = database_pool(replace(config, database_url=UNREACHABLE_DATABASE_URL), 1)
    with caplog.at_level(logging.INFO, logger="payload_stats.flush.scheduler"):
        RetentionJob(broken, config, FakeClock(START))()
    [record] = [r for r in caplog.records if r.getMessage() == "retention_failed"]
    assert record.levelno == logging.ERROR
    assert record.reason and "\n" not in record.reason


def test_partition_job_creates_today_and_the_days_ahead(config, pool, caplog):
    job = PartitionJob(pool, replace(config, partition_ahead_days=3), FakeClock(START))
    with caplog.at_level(logging.INFO, logger="payload_stats.flush.scheduler"):
        job()
        job()  # nothing more to create
    today = NOW.date()
    assert days_partitioned(pool) == [today + i * DAY for i in range(4)]
    assert [r.partitions for r in caplog.records if r.getMessage() == "partitions_created"] == [4]


def test_partition_job_with_postgres_down_logs_and_does_not_raise(config, caplog):
    broken = database_pool(replace(config, database_url=UNREACHABLE_DATABASE_URL), 1)
    with caplog.at_level(logging.INFO, logger="payload_stats.flush.scheduler"):
        PartitionJob(broken, config, FakeClock(START))()
    [record] = [r for r in caplog.records if r.getMessage() == "partitions_failed"]
    assert record.levelno == logging.ERROR


def _jobs(config: Config, redis, pool, *, with_retention: bool = True) -> dict:
    scheduler = build_scheduler(
        FlushJob(redis, pool, config),
        config,
        RetentionJob(pool, config) if with_retention else None,
        PartitionJob(pool, config),
    )
    return {job.id: job for job in scheduler.get_jobs()}


def test_scheduler_runs_retention_daily_and_partitions_hourly(config, redis, pool):
    jobs = _jobs(replace(config, retention_days=365), redis, pool)
    assert set(jobs) == {"flush", "retention", "partitions"}
    retention = jobs["retention"]
    assert isinstance(retention.func, RetentionJob)
    assert retention.func.config.retention_days == 365
    assert retention.trigger.interval == timedelta(days=1)
    assert retention.max_instances == 1 and retention.coalesce is True
    # Not at start-up with the first flush, but soon after.
    assert retention.next_run_time > jobs["flush"].next_run_time
    assert jobs["partitions"].trigger.interval == timedelta(hours=1)
    assert jobs["partitions"].next_run_time < retention.next_run_time


def test_scheduler_has_no_retention_job_when_retention_days_is_0(config, redis, pool):
    off = replace(config, retention_days=0)
    assert set(_jobs(off, redis, pool)) == {"flush", "partitions"}
    assert set(_jobs(config, redis, pool, with_retention=False)) == {"flush", "partitions"}


def test_retention_and_partition_days_from_the_environment():
    assert Config.from_env({}).retention_days == 365
    assert Config.from_env({"STATS_RETENTION_DAYS": "0"}).retention_days == 0
    assert Config.from_env({"STATS_RETENTION_DAYS": "30"}).retention_days == 30
    assert Config.from_env({}).partition_ahead_days == 7
    assert Config.from_env({"STATS_PARTITION_AHEAD_DAYS": "2"}).partition_ahead_days == 2

"""Retention: deleting ``stats`` rows older than STATS_RETENTION_DAYS.

Rows are inserted at known instants around the cut-off (``now`` - days, to the
microsecond) into the test's PostgreSQL schema; after ``prune`` exactly the
older ones must be gone and every other row must be untouched. A cursor that
records each DELETE shows the work was done in bounded batches, each in its
own transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import psycopg2.extensions
import psycopg2.extras
import pytest
from psycopg2.pool import ThreadedConnectionPool

from payload_stats.config import Config
from payload_stats.flush.retention import prune
from payload_stats.flush.scheduler import FlushJob, RetentionJob, build_scheduler
from payload_stats.postgres.pool import connection, database_pool
from tests.conftest import START, FakeClock

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/x"
NOW = datetime.fromtimestamp(START, tz=timezone.utc)  # 2026-11-26T10:00:01Z

US = timedelta(microseconds=1)


def insert(pool, times: Iterable[datetime], customer: str = "acme") -> None:
    with connection(pool) as conn, conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO stats (time, customer, content, cdn, p2p, sessions, payloads) VALUES %s",
            [(t, f"{customer}-{i}", "movie", i, i, 1, 1) for i, t in enumerate(times)],
        )


def remaining(pool) -> set[tuple[datetime, str]]:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT time, customer FROM stats")
        rows = {(t.astimezone(timezone.utc), cu) for t, cu in cur.fetchall()}
        conn.rollback()
    return rows


def ledger(pool) -> set[str]:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT snapshot_id FROM flush_ledger")
        ids = {row[0] for row in cur.fetchall()}
        conn.rollback()
    return ids


class DeleteSpy(psycopg2.extensions.cursor):
    """Records (rows deleted, transaction id) for every DELETE it runs."""

    deletes: dict[str, list[tuple[int, int]]] = {}

    def execute(self, query, vars=None):
        super().execute(query, vars)
        text = str(query)
        for table in ("stats", "flush_ledger"):
            if f"DELETE FROM {table}\n" in text or f"DELETE FROM {table} " in text:
                count = self.rowcount
                with self.connection.cursor(cursor_factory=psycopg2.extensions.cursor) as c:
                    c.execute("SELECT txid_current()")
                    txid = c.fetchone()[0]
                DeleteSpy.deletes.setdefault(table, []).append((count, txid))


@pytest.fixture
def spy_pool(config: Config, pool) -> Iterator[ThreadedConnectionPool]:
    """A pool on the test's (migrated) schema whose cursors record each DELETE."""
    DeleteSpy.deletes = {}
    spied = ThreadedConnectionPool(0, 2, config.database_url, cursor_factory=DeleteSpy)
    yield spied
    spied.closeall()


def test_prune_deletes_exactly_the_older_rows_in_batches(pool, spy_pool):
    cutoff = NOW - timedelta(days=365)
    old = [
        cutoff - US,
        cutoff - timedelta(seconds=1),
        cutoff - timedelta(minutes=5),
        cutoff - timedelta(hours=1),
        cutoff - timedelta(days=1),
        cutoff - timedelta(days=30),
        cutoff - timedelta(days=400),
        cutoff - timedelta(days=3650),
        datetime(2001, 1, 1, tzinfo=timezone.utc),
        cutoff - timedelta(days=2, minutes=5),
    ]
    kept = [
        cutoff,
        cutoff + US,
        cutoff + timedelta(minutes=5),
        NOW - timedelta(days=1),
        NOW,
        NOW + timedelta(minutes=5),
    ]
    insert(pool, old, "old")
    insert(pool, kept, "kept")

    deleted = prune(spy_pool, 365, START, batch=3)

    assert deleted == 10
    assert remaining(pool) == {(t, f"kept-{i}") for i, t in enumerate(kept)}
    counts = [n for n, _ in DeleteSpy.deletes["stats"]]
    assert counts == [3, 3, 3, 1]
    txids = [t for _, t in DeleteSpy.deletes["stats"]]
    assert len(set(txids)) == len(txids), "the batches shared a transaction"


def test_prune_an_exact_multiple_of_the_batch(pool, spy_pool):
    cutoff = NOW - timedelta(days=30)
    insert(pool, [cutoff - timedelta(hours=h) for h in range(1, 7)], "old")
    insert(pool, [cutoff + timedelta(hours=h) for h in range(3)], "kept")
    assert prune(spy_pool, 30, START, batch=3) == 6
    assert {cu for _, cu in remaining(pool)} == {"kept-0", "kept-1", "kept-2"}
    assert all(n <= 3 for n, _ in DeleteSpy.deletes["stats"])
    assert sum(n for n, _ in DeleteSpy.deletes["stats"]) == 6


def test_prune_with_nothing_old(pool, spy_pool):
    insert(pool, [NOW - timedelta(days=d) for d in range(5)])
    assert prune(spy_pool, 7, START, batch=3) == 0
    assert len(remaining(pool)) == 5
    assert [n for n, _ in DeleteSpy.deletes["stats"]] == [0]


def test_prune_a_large_backlog_with_the_default_batch(pool):
    """More rows than one default batch (10,000): all of the old ones go."""
    with connection(pool) as conn, conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO stats (time, customer, content, cdn, p2p, sessions, payloads) "
            "SELECT %s - n * interval '5 minutes', 'c' || (n %% 7), 'x', n, 0, 0, 1 "
            "FROM generate_series(1, 12500) AS n",
            (NOW - timedelta(days=365),),
        )
    insert(pool, [NOW - timedelta(days=364)])
    assert prune(pool, 365, START) == 12500
    assert len(remaining(pool)) == 1


def test_prune_also_drops_old_ledger_entries(pool, spy_pool):
    cutoff = NOW - timedelta(days=365)
    with connection(pool) as conn, conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO flush_ledger (snapshot_id, window_end, flushed_at) VALUES %s",
            [
                (f"old-{i}", cutoff - timedelta(days=i + 1), cutoff - timedelta(days=i, seconds=1))
                for i in range(4)
            ]
            + [
                (f"new-{i}", cutoff + timedelta(days=i), cutoff + timedelta(days=i))
                for i in range(3)
            ],
        )
    insert(pool, [cutoff - timedelta(days=1)])
    # The count returned is of stats rows only.
    assert prune(spy_pool, 365, START, batch=3) == 1
    assert ledger(pool) == {"new-0", "new-1", "new-2"}
    assert sum(n for n, _ in DeleteSpy.deletes["flush_ledger"]) == 4
    assert all(n <= 3 for n, _ in DeleteSpy.deletes["flush_ledger"])


def test_prune_logs_what_it_deleted(pool, caplog):
    insert(pool, [NOW - timedelta(days=400), NOW - timedelta(days=366), NOW])
    with caplog.at_level(logging.INFO, logger="payload_stats.flush.retention"):
        assert prune(pool, 365, START) == 2
    [record] = [r for r in caplog.records if r.getMessage() == "retention"]
    assert record.levelno == logging.INFO
    assert record.deleted == 2
    assert datetime.fromisoformat(record.before) == NOW - timedelta(days=365)


# --- the scheduled job -----------------------------------------------------------


def test_retention_job_uses_retention_days_and_the_clock(config, pool, caplog):
    clock = FakeClock(START)
    insert(
        pool,
        [
            NOW - timedelta(days=31),
            NOW - timedelta(days=30, seconds=1),
            NOW - timedelta(days=30),
            NOW - timedelta(days=29),
        ],
    )
    job = RetentionJob(pool, replace(config, retention_days=30), clock)
    with caplog.at_level(logging.INFO, logger="payload_stats.flush.retention"):
        job()
    assert {cu for _, cu in remaining(pool)} == {"acme-2", "acme-3"}
    assert [r.deleted for r in caplog.records if r.getMessage() == "retention"] == [2]
    # A day later, the row that was exactly 30 days old is now older.
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


def _jobs(config: Config, redis, pool, *, with_retention: bool = True) -> dict:
    scheduler = build_scheduler(
        FlushJob(redis, pool, config),
        config,
        RetentionJob(pool, config) if with_retention else None,
    )
    return {job.id: job for job in scheduler.get_jobs()}


def test_scheduler_runs_retention_daily(config, redis, pool):
    jobs = _jobs(replace(config, retention_days=365), redis, pool)
    assert set(jobs) == {"flush", "retention"}
    retention = jobs["retention"]
    assert isinstance(retention.func, RetentionJob)
    assert retention.func.config.retention_days == 365
    assert retention.trigger.interval == timedelta(days=1)
    assert retention.max_instances == 1 and retention.coalesce is True
    # Not at start-up with the first flush, but soon after.
    assert retention.next_run_time > jobs["flush"].next_run_time


def test_scheduler_has_no_retention_job_when_retention_days_is_0(config, redis, pool):
    off = replace(config, retention_days=0)
    assert set(_jobs(off, redis, pool)) == {"flush"}
    assert set(_jobs(config, redis, pool, with_retention=False)) == {"flush"}


def test_retention_days_from_the_environment():
    assert Config.from_env({}).retention_days == 365
    assert Config.from_env({"STATS_RETENTION_DAYS": "0"}).retention_days == 0
    assert Config.from_env({"STATS_RETENTION_DAYS": "30"}).retention_days == 30

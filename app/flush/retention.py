"""Retention: dropping the day partitions older than STATS_RETENTION_DAYS.

``stats`` is partitioned by UTC day (docs/stats-table.md, "Partitions"), so
old rows go a whole day at a time: the day's rollup rows and ledger rows are
deleted in one short transaction, then its partition is detached without
blocking reads and writes (DETACH PARTITION ... CONCURRENTLY) and dropped.
No row-by-row DELETE of ``stats``, no bloat left for VACUUM. A day is dropped
once all of it is older than the cut, so rows are kept at least
STATS_RETENTION_DAYS days and at most one day more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from psycopg2 import sql as pgsql
from psycopg2.pool import ThreadedConnectionPool

from ..postgres import partitions
from ..postgres.pool import Connection, connection
from ..postgres.statements import sql

logger = logging.getLogger(__name__)


@dataclass
class Pruned:
    """What one retention run removed."""

    before: datetime  # every row with time < before is gone
    days: list[date] = field(default_factory=list)
    rows: int = 0  # stats rows in the dropped partitions


def cut(now: float, days: int) -> datetime:
    """The first instant kept: the UTC midnight at or before ``now - days``."""
    moment = datetime.fromtimestamp(now, tz=timezone.utc) - timedelta(days=days)
    return partitions.day_start(moment.date())


def prune(pool: ThreadedConnectionPool, days: int, now: float) -> Pruned:
    """Drop every day partition older than ``days`` days, with its rollup and
    ledger rows; return what was removed. Raises psycopg2.Error; a run that
    stops half-way is completed by the next one."""
    result = Pruned(before=cut(now, days))
    with connection(pool) as conn:
        with conn:
            old = [p for p in partitions.attached(conn) if p.day < result.before.date()]
        for partition in old:
            result.rows += _drop_day(conn, partition)
            result.days.append(partition.day)
        with conn:
            # Rollup and ledger rows of days that had no partition left.
            _delete_derived(conn, result.before)
            leftovers = _leftovers(conn, result.before.date())
        for name in leftovers:  # detached by a run that stopped before dropping
            with conn, conn.cursor() as cur:
                cur.execute(pgsql.SQL("DROP TABLE IF EXISTS {}").format(pgsql.Identifier(name)))
    logger.info(
        "retention",
        extra={
            "deleted": result.rows,
            "partitions": len(result.days),
            "before": result.before.isoformat(),
        },
    )
    return result


def _drop_day(conn: Connection, partition: partitions.Partition) -> int:
    end = partitions.day_start(partition.day) + partitions.DAY
    with conn, conn.cursor() as cur:
        cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(partition.name)))
        rows = cur.fetchone()[0]
        _delete_derived(conn, end)
    partitions.detach_and_drop(conn, partition)
    return rows


def _delete_derived(conn: Connection, before: datetime) -> None:
    """Delete the rollup rows of buckets, and the ledger rows of windows, before ``before``."""
    with conn.cursor() as cur:
        cur.execute(sql("prune_rollups"), {"before": before})
        cur.execute(sql("prune_ledger"), {"before": before})


def _leftovers(conn: Connection, before: date) -> list[str]:
    """Standalone stats_YYYYMMDD tables (no longer partitions) of days before ``before``."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_class AS c JOIN pg_class AS parent "
            "ON parent.oid = 'stats'::regclass AND parent.relnamespace = c.relnamespace "
            "WHERE c.relkind = 'r' AND c.relname ~ '^stats_[0-9]{8}$' AND NOT c.relispartition"
        )
        names = [row[0] for row in cur.fetchall()]
    return [n for n in names if datetime.strptime(n[6:], "%Y%m%d").date() < before]

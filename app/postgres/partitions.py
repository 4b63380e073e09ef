"""The day partitions of ``stats`` (docs/stats-table.md, "Partitions").

``stats`` is range-partitioned on ``time`` (the window end), one partition per
UTC day, named ``stats_YYYYMMDD``; there is no DEFAULT partition. A write
makes sure the partitions of its days exist first, in a short transaction of
its own (``ensure``); the scheduler creates the coming days' partitions ahead
(``ensure_ahead``), and retention detaches and drops the old ones
(``payload_stats.flush.retention``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from psycopg2 import sql as pgsql
from psycopg2.pool import ThreadedConnectionPool

from .pool import Connection, connection

NAME = re.compile(r"stats_(\d{8})")
DAY = timedelta(days=1)


def day_of(moment: datetime) -> date:
    """The UTC day whose partition holds a row of time ``moment``."""
    return moment.astimezone(timezone.utc).date()


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def name_of(day: date) -> str:
    return f"stats_{day:%Y%m%d}"


def ensure(conn: Connection, days: Iterable[date]) -> int:
    """Create the missing partitions of ``days``, in a transaction of their own
    (call it outside any other); returns how many were created.

    Cheap when they exist (one catalog query). Raises psycopg2.Error.
    """
    wanted = sorted(set(days))
    if not wanted:
        return 0
    with conn, conn.cursor() as cur:
        cur.execute("SELECT stats_ensure_partitions(%s::date[])", (wanted,))
        return cur.fetchone()[0]


def ensure_ahead(pool: ThreadedConnectionPool, now: float, days_ahead: int) -> int:
    """Create the partitions of today and the next ``days_ahead`` days (UTC)."""
    today = datetime.fromtimestamp(now, tz=timezone.utc).date()
    with connection(pool) as conn:
        return ensure(conn, (today + i * DAY for i in range(days_ahead + 1)))


@dataclass(frozen=True)
class Partition:
    day: date
    name: str
    detach_pending: bool = False


def attached(conn: Connection) -> list[Partition]:
    """The partitions of ``stats``, oldest first. Runs in the caller's transaction."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, i.inhdetachpending FROM pg_inherits AS i "
            "JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'stats'::regclass"
        )
        found = []
        for name, pending in cur.fetchall():
            match = NAME.fullmatch(name)
            if match:
                day = datetime.strptime(match[1], "%Y%m%d").date()
                found.append(Partition(day, name, pending))
    return sorted(found, key=lambda p: p.day)


def span(conn: Connection) -> tuple[datetime, datetime] | None:
    """[start of the oldest partition, end of the newest), or None without any."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT min(c.relname), max(c.relname) FROM pg_inherits AS i "
            "JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'stats'::regclass AND c.relname ~ '^stats_[0-9]{8}$'"
        )
        first, last = cur.fetchone()
    if first is None:
        return None
    start = datetime.strptime(first[6:], "%Y%m%d").replace(tzinfo=timezone.utc)
    end = datetime.strptime(last[6:], "%Y%m%d").replace(tzinfo=timezone.utc) + DAY
    return start, end


def detach_and_drop(conn: Connection, partition: Partition) -> None:
    """Detach ``partition`` without blocking reads and writes of ``stats``
    (DETACH ... CONCURRENTLY, or FINALIZE when an earlier detach was
    interrupted), then drop it. Needs a connection outside any transaction.
    """
    name = pgsql.Identifier(partition.name)
    mode = pgsql.SQL("FINALIZE" if partition.detach_pending else "CONCURRENTLY")
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(pgsql.SQL("ALTER TABLE stats DETACH PARTITION {} {}").format(name, mode))
            cur.execute(pgsql.SQL("DROP TABLE {}").format(name))
    finally:
        conn.autocommit = autocommit

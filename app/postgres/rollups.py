"""Checking the rollups against the ``stats`` rows (``payload-stats verify``).

Each rollup row must equal the sum of the ``stats`` rows of its bucket,
customer (and content), and there must be a rollup row exactly for the
buckets that have rows (docs/stats-table.md, "Rollups"). The check runs one
UTC day at a time, each in its own read-only transaction (one snapshot: the
rows and the rollups are compared as of one instant, whatever flushes run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from psycopg2 import sql as pgsql
from psycopg2.pool import ThreadedConnectionPool

from . import partitions
from .pool import Connection, connection

COUNTERS = ("cdn", "p2p", "sessions", "payloads", "watch_ms")
# (table, bucket unit, with content)
TABLES = (
    ("stats_hourly", "hour", True),
    ("stats_daily", "day", True),
    ("stats_customer_hourly", "hour", False),
    ("stats_customer_daily", "day", False),
)


@dataclass(frozen=True)
class Difference:
    table: str
    bucket: datetime
    customer: str
    content: str | None
    rollup: tuple[int, ...] | None  # None: no rollup row
    rows: tuple[int, ...] | None  # None: no stats rows

    def describe(self) -> str:
        name = self.customer if self.content is None else f"{self.customer}/{self.content}"
        where = f"{self.table} {self.bucket:%Y-%m-%dT%H:%M:%SZ} {name}"
        if self.rollup is None:
            return f"{where}: no rollup row, the stats rows sum to {_sums(self.rows)}"
        if self.rows is None:
            return f"{where}: rollup {_sums(self.rollup)} but no stats rows"
        return f"{where}: rollup {_sums(self.rollup)}, the stats rows sum to {_sums(self.rows)}"


def _sums(values: tuple[int, ...] | None) -> str:
    return " ".join(f"{n}={v}" for n, v in zip(COUNTERS, values or (), strict=True))


def days(start: datetime, end: datetime) -> Iterator[date]:
    """The UTC days that [start, end) touches."""
    day = partitions.day_of(start)
    while partitions.day_start(day) < end:
        yield day
        day += timedelta(days=1)


def verify(
    pool: ThreadedConnectionPool,
    start: datetime,
    end: datetime,
    on_day: Callable[[date, list[Difference]], None] | None = None,
) -> list[Difference]:
    """Every difference between the rollups and the stats rows over the whole
    UTC days that [start, end) touches. Raises psycopg2.Error."""
    found: list[Difference] = []
    with connection(pool) as conn:
        for day in days(start, end):
            lo = partitions.day_start(day)
            try:
                conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
                diffs = [d for t in TABLES for d in _compare(conn, *t, lo, lo + partitions.DAY)]
            finally:
                conn.rollback()
                conn.set_session(readonly=False, isolation_level="DEFAULT")
            found += diffs
            if on_day:
                on_day(day, diffs)
    return found


def _columns(alias: str) -> pgsql.Composed:
    return pgsql.SQL(", ").join(
        pgsql.SQL("{}.{}").format(pgsql.Identifier(alias), pgsql.Identifier(c)) for c in COUNTERS
    )


def _compare(
    conn: Connection, table: str, unit: str, with_content: bool, lo: datetime, hi: datetime
) -> list[Difference]:
    keys = ["bucket", "customer", *(["content"] if with_content else [])]
    key_list = pgsql.SQL(", ").join(map(pgsql.Identifier, keys))
    sums = pgsql.SQL(", ").join(
        pgsql.SQL("sum({0}) AS {0}").format(pgsql.Identifier(c)) for c in COUNTERS
    )
    differs = pgsql.SQL(" OR ").join(
        pgsql.SQL("r.{0} IS DISTINCT FROM s.{0}").format(pgsql.Identifier(c)) for c in COUNTERS
    )
    statement = pgsql.SQL(
        "WITH s AS (SELECT date_trunc({unit}, time, 'UTC') AS bucket, {names}, {sums} "
        "FROM stats WHERE time >= %(lo)s AND time < %(hi)s GROUP BY {keys}), "
        "r AS (SELECT * FROM {table} WHERE bucket >= %(lo)s AND bucket < %(hi)s) "
        "SELECT {key_out}, r.cdn IS NOT NULL, {r_cols}, s.cdn IS NOT NULL, {s_cols} "
        "FROM r FULL JOIN s USING ({keys}) WHERE {differs} ORDER BY {keys}"
    ).format(
        unit=pgsql.Literal(unit),
        names=pgsql.SQL(", ").join(map(pgsql.Identifier, keys[1:])),
        sums=sums,
        keys=key_list,
        table=pgsql.Identifier(table),
        key_out=key_list,
        r_cols=pgsql.SQL(", ").join(
            pgsql.SQL("r.{}").format(pgsql.Identifier(c)) for c in COUNTERS
        ),
        s_cols=pgsql.SQL(", ").join(
            pgsql.SQL("s.{}").format(pgsql.Identifier(c)) for c in COUNTERS
        ),
        differs=differs,
    )
    with conn.cursor() as cur:
        cur.execute(statement, {"lo": lo, "hi": hi})
        out = []
        n = len(keys)
        for row in cur.fetchall():
            has_r, r_vals = row[n], row[n + 1 : n + 6]
            has_s, s_vals = row[n + 6], row[n + 7 : n + 12]
            out.append(
                Difference(
                    table=table,
                    bucket=row[0],
                    customer=row[1],
                    content=row[2] if with_content else None,
                    rollup=tuple(int(v) for v in r_vals) if has_r else None,
                    rows=tuple(int(v) for v in s_vals) if has_s else None,
                )
            )
    return out

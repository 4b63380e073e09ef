"""Stats history from PostgreSQL: one page of rows or rollups in keyset order.

Where the numbers come from (docs/stats-table.md, "Rollups"):

- rows, ``group_by`` alone and ``bucket=5m``: the ``stats`` rows. ``stats`` is
  partitioned by day, so a page is read in time slices that grow from the
  page's start (1, 4, 16... days) until it is full: each query touches a few
  partitions, never all of them.
- ``bucket=1h``: the hourly rollups; ``1d`` and ``1mo``: the daily rollups.
  A range that does not start or end on a bucket boundary is completed
  exactly: whole days from the daily rollup, whole hours from the hourly
  one, the remaining minutes from ``stats``, summed together. Only the
  per-customer rollups are read when neither ``group_by`` nor a filter
  needs the content.

Every sum is exact: rollup columns are numeric and come back as Python ints.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from psycopg2 import sql as pgsql
from psycopg2.pool import ThreadedConnectionPool

from ..postgres import partitions
from ..postgres.pool import Connection, connection
from .history_params import GROUPS, Query, encode_cursor

MICROSECOND = timedelta(microseconds=1)
FIVE_MINUTES = timedelta(minutes=5)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# The instants Python can hold; a query parameter may sit at either end.
EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
LATEST = datetime.max.replace(tzinfo=timezone.utc)
ROLLUP_BUCKETS = ("1h", "1d", "1mo")
# (time, customer, content, cdn, p2p, sessions, payloads, watch_ms)
Row = tuple
COUNTERS = ("cdn", "p2p", "sessions", "payloads", "watch_ms")


def fetch(pool: ThreadedConnectionPool, query: Query) -> tuple[list[Row], str | None]:
    """One page of rows (time, customer, content, cdn, p2p, sessions, payloads,
    watch_ms) and the cursor of the next page (None on the last). A column
    not grouped by is ''. Raises psycopg2.Error."""
    with connection(pool) as conn:
        try:
            rows = page(conn, query, query.limit + 1)
        finally:
            conn.rollback()
    more = len(rows) > query.limit
    # Rollup sums are numeric (Decimal): exact integers, however large.
    rows = [(*row[:3], *(int(v) for v in row[3:])) for row in rows[: query.limit]]
    return rows, encode_cursor(query, rows[-1]) if more else None


def pages(pool: ThreadedConnectionPool, query: Query, size: int = 1000) -> Iterator[list[Row]]:
    """Every row of ``query`` from its cursor on, one page of ``size`` at a time
    (a connection is borrowed per page, not held between them)."""
    while True:
        with connection(pool) as conn:
            try:
                rows = page(conn, query, size)
            finally:
                conn.rollback()
        if rows:
            yield rows
        if len(rows) < size:
            return
        last = rows[-1]
        query = replace(query, after=(last[0], last[1], last[2]))


def page(conn: Connection, query: Query, limit: int) -> list[Row]:
    """At most ``limit`` rows of ``query`` after its cursor, in the caller's transaction."""
    if query.bucket in ROLLUP_BUCKETS:
        rows = _rollup_page(conn, query, limit)
    else:
        rows = _raw_page(conn, query, limit)
    if rows and any(type(v) is not int for v in rows[0][3:]):  # numeric sums: Decimal
        return [(r[0], r[1], r[2], *(int(v) for v in r[3:])) for r in rows]
    return rows


# --- buckets -----------------------------------------------------------------


def floor(moment: datetime, bucket: str) -> datetime:
    """The start of the UTC bucket holding ``moment``."""
    m = moment.astimezone(timezone.utc)
    if bucket == "5m":
        return m.replace(minute=m.minute - m.minute % 5, second=0, microsecond=0)
    if bucket == "1h":
        return m.replace(minute=0, second=0, microsecond=0)
    if bucket == "1d":
        return m.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "1mo":
        return m.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(bucket)


def next_start(start: datetime, bucket: str) -> datetime:
    """The start of the bucket after the one starting at ``start`` (LATEST past year 9999)."""
    if bucket == "1mo":
        year, month = divmod(start.month, 12)
        try:
            return start.replace(year=start.year + year, month=month + 1)
        except ValueError:
            return LATEST
    return shift(start, {"5m": FIVE_MINUTES, "1h": HOUR, "1d": DAY}[bucket])


def shift(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, held at EARLIEST or LATEST instead of overflowing."""
    try:
        return moment + delta
    except OverflowError:
        return LATEST if delta > timedelta(0) else EARLIEST


def ceil(moment: datetime, bucket: str) -> datetime:
    start = floor(moment, bucket)
    return start if start == moment else next_start(start, bucket)


def bucket_ms(bucket: str | None, start: datetime, window_seconds: int) -> int:
    """The length of a bucket in ms (a raw row's: the window's), for average viewers."""
    if bucket is None:
        return window_seconds * 1000
    if bucket == "1mo":
        return calendar.monthrange(start.year, start.month)[1] * 86_400_000
    return {"5m": 300_000, "1h": 3_600_000, "1d": 86_400_000}[bucket]


def avg_viewers(watch_ms: int, length_ms: int) -> Decimal:
    """watch_ms / length, exact to 6 decimal places (rounded half to even)."""
    with localcontext(prec=80):  # sums past bigint included
        return (Decimal(watch_ms) / Decimal(length_ms)).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_EVEN
        )


# --- rollup buckets: rollup tables, ragged edges from finer levels ------------

_TABLES = {
    # level: (per customer and content, per customer, time column)
    "hour": ("stats_hourly", "stats_customer_hourly", "bucket"),
    "day": ("stats_daily", "stats_customer_daily", "bucket"),
    "raw": ("stats", "stats", "time"),
}
_UNIT = {"hour": "1h", "day": "1d"}


def pieces(
    start: datetime | None, end: datetime | None, levels: tuple[str, ...]
) -> list[tuple[str, datetime | None, datetime | None]]:
    """[start, end) cut into disjoint (level, lo, hi) pieces: the whole units of
    the coarsest level, and finer levels (down to "raw") at the edges."""
    if not levels:
        return [("raw", start, end)] if start is None or end is None or start < end else []
    level, finer = levels[0], levels[1:]
    unit = _UNIT[level]
    lo = None if start is None else ceil(start, unit)
    hi = None if end is None else floor(end, unit)
    if lo is not None and hi is not None and lo >= hi:
        return pieces(start, end, finer)
    out = []
    if start is not None and start < lo:
        out += pieces(start, lo, finer)
    out.append((level, lo, hi))
    if end is not None and hi < end:
        out += pieces(hi, end, finer)
    return out


def _rollup_page(conn: Connection, query: Query, limit: int) -> list[tuple]:
    by_customer, by_content = GROUPS[query.group_by] if query.group_by else (True, True)
    per_customer = not by_content and query.content is None
    levels = ("hour",) if query.bucket == "1h" else ("day", "hour")
    trunc = {"1h": "hour", "1d": "day", "1mo": "month"}[query.bucket]
    params: dict[str, Any] = {"customer": query.customer, "content": query.content}
    # The cursor's bucket bounds every piece: nothing before it (asc) or after it (desc).
    start, end = query.start, query.end
    if query.after is not None:
        if query.descending:
            upper = next_start(query.after[0], query.bucket)
            end = upper if end is None else min(end, upper)
        else:
            start = query.after[0] if start is None else max(start, query.after[0])
    selects = []
    for i, (level, lo, hi) in enumerate(pieces(start, end, levels)):
        table = _TABLES[level][1 if per_customer and level != "raw" else 0]
        column = pgsql.Identifier(_TABLES[level][2])
        where = [pgsql.SQL("TRUE")]
        if lo is not None:
            params[f"lo{i}"] = lo
            where.append(pgsql.SQL("{} >= {}").format(column, pgsql.Placeholder(f"lo{i}")))
        if hi is not None:
            params[f"hi{i}"] = hi
            where.append(pgsql.SQL("{} < {}").format(column, pgsql.Placeholder(f"hi{i}")))
        if query.customer is not None:
            where.append(pgsql.SQL("customer = %(customer)s"))
        if query.content is not None:
            where.append(pgsql.SQL("content = %(content)s"))
        selects.append(
            pgsql.SQL(
                "SELECT date_trunc({trunc}, {column}, 'UTC') AS time, {customer} AS customer, "
                "{content} AS content, cdn, p2p, sessions, payloads, watch_ms "
                "FROM {table} WHERE {where}"
            ).format(
                trunc=pgsql.Literal(trunc),
                column=column,
                customer=pgsql.SQL("customer" if by_customer else "''"),
                content=pgsql.SQL("content" if by_content else "''"),
                table=pgsql.Identifier(table),
                where=pgsql.SQL(" AND ").join(where),
            )
        )
    if not selects:
        return []
    statement = pgsql.SQL(
        "SELECT time, customer, content, sum(cdn), sum(p2p), sum(sessions), sum(payloads), "
        "sum(watch_ms) FROM ({union}) AS pieces GROUP BY 1, 2, 3"
    ).format(union=pgsql.SQL(" UNION ALL ").join(selects))
    return _ordered(conn, statement, query, params, limit)


def _ordered(
    conn: Connection,
    inner: pgsql.Composable,
    query: Query,
    params: dict[str, Any],
    limit: int,
) -> list[tuple]:
    """``inner`` (rows with time, customer, content first) after the cursor, in
    keyset order, at most ``limit``."""
    direction = pgsql.SQL("DESC" if query.descending else "ASC")
    where = pgsql.SQL("TRUE")
    if query.after is not None:
        params.update(after_time=query.after[0], after_customer=query.after[1])
        params["after_content"] = query.after[2]
        where = pgsql.SQL(
            "(time, customer, content) {} (%(after_time)s, %(after_customer)s, %(after_content)s)"
        ).format(pgsql.SQL("<" if query.descending else ">"))
    params["limit"] = limit
    statement = pgsql.SQL(
        "SELECT * FROM ({inner}) AS page WHERE {where} "
        "ORDER BY time {d}, customer {d}, content {d} LIMIT %(limit)s"
    ).format(inner=inner, where=where, d=direction)
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


# --- raw rows: stats, read in growing time slices ------------------------------

SLICE_GROWTH = 4  # each slice covers 4 times the days of the one before


def _raw_page(conn: Connection, query: Query, limit: int) -> list[tuple]:
    if query.start is not None and query.end is not None:
        lo, hi = query.start, query.end
    else:  # an open end: as far as the oldest or newest partition
        bounds = partitions.span(conn)
        if bounds is None:
            return []
        lo, hi = bounds
        if query.start is not None:
            lo = max(lo, query.start)
        if query.end is not None:
            hi = min(hi, query.end)
    if query.after is not None:  # nothing before (asc) or after (desc) the cursor's time
        t = query.after[0]
        if query.descending:
            hi = min(hi, shift(t, FIVE_MINUTES if query.bucket == "5m" else MICROSECOND))
        else:
            lo = max(lo, t)
    rows: list[tuple] = []
    days = 1
    while lo < hi and len(rows) < limit:
        if query.descending:
            last_day = partitions.day_start(shift(hi, -MICROSECOND).date())
            a = max(lo, shift(last_day, -(days - 1) * DAY))
            rows += _raw_slice(conn, query, a, hi, limit - len(rows))
            hi = a
        else:
            b = min(hi, shift(partitions.day_start(lo.date()), days * DAY))
            rows += _raw_slice(conn, query, lo, b, limit - len(rows))
            lo = b
        days = min(days * SLICE_GROWTH, 100_000)  # 100,000 days: more than any range
    return rows


def _raw_slice(
    conn: Connection, query: Query, lo: datetime, hi: datetime, limit: int
) -> list[tuple]:
    params: dict[str, Any] = {
        "customer": query.customer,
        "content": query.content,
        "lo": lo,
        "hi": hi,
    }
    where = [pgsql.SQL("time >= %(lo)s AND time < %(hi)s")]
    if query.customer is not None:
        where.append(pgsql.SQL("customer = %(customer)s"))
    if query.content is not None:
        where.append(pgsql.SQL("content = %(content)s"))
    if not query.rollup:
        if query.after is not None:
            # Rows: the cursor goes into the scan itself (the primary key's order).
            params.update(after_time=query.after[0], after_customer=query.after[1])
            params["after_content"] = query.after[2]
            where.append(
                pgsql.SQL(
                    "(time, customer, content) {} "
                    "(%(after_time)s, %(after_customer)s, %(after_content)s)"
                ).format(pgsql.SQL("<" if query.descending else ">"))
            )
        params["limit"] = limit
        statement = pgsql.SQL(
            "SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms FROM stats "
            "WHERE {where} ORDER BY time {d}, customer {d}, content {d} LIMIT %(limit)s"
        ).format(
            where=pgsql.SQL(" AND ").join(where),
            d=pgsql.SQL("DESC" if query.descending else "ASC"),
        )
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    by_customer, by_content = GROUPS[query.group_by] if query.group_by else (True, True)
    stamp = (
        "date_bin('5 minutes', time, TIMESTAMPTZ '1970-01-01 00:00:00+00')"
        if query.bucket == "5m"
        else "time"
    )
    inner = pgsql.SQL(
        "SELECT {stamp} AS time, {customer} AS customer, {content} AS content, sum(cdn) AS cdn, "
        "sum(p2p) AS p2p, sum(sessions) AS sessions, sum(payloads) AS payloads, "
        "sum(watch_ms) AS watch_ms FROM stats WHERE {where} GROUP BY 1, 2, 3"
    ).format(
        stamp=pgsql.SQL(stamp),
        customer=pgsql.SQL("customer" if by_customer else "''"),
        content=pgsql.SQL("content" if by_content else "''"),
        where=pgsql.SQL(" AND ").join(where),
    )
    return _ordered(conn, inner, query, params, limit)

"""Stats history from PostgreSQL: one page of rows or rollups in keyset order."""

from __future__ import annotations

from psycopg2 import sql as pgsql
from psycopg2.pool import ThreadedConnectionPool

from ..postgres.pool import connection
from ..postgres.statements import sql
from .history_params import BUCKETS, GROUPS, Query, encode_cursor


def fetch(pool: ThreadedConnectionPool, query: Query) -> tuple[list[tuple], str | None]:
    """One page of rows (time, customer, content, cdn, p2p, sessions, payloads) and
    the cursor of the next page (None on the last). Raises psycopg2.Error."""
    by_customer, by_content = GROUPS[query.group_by] if query.group_by else (True, True)
    after = query.after or (None, None, None)
    params = {
        "customer": query.customer,
        "content": query.content,
        "from": query.start,
        "to": query.end,
        "after_time": after[0],
        "after_customer": after[1],
        "after_content": after[2],
        "limit": query.limit + 1,
        "bucket": BUCKETS[query.bucket] if query.bucket else None,
        "by_customer": by_customer,
        "by_content": by_content,
    }
    template = sql("history_rollup" if query.rollup else "history_rows")
    statement = pgsql.SQL(template).format(
        cmp=pgsql.SQL("<" if query.descending else ">"),
        dir=pgsql.SQL("DESC" if query.descending else "ASC"),
    )
    with connection(pool) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                rows = cur.fetchall()
        finally:
            conn.rollback()
    more = len(rows) > query.limit
    # Rollup sums are numeric (Decimal): exact integers, however large.
    rows = [(*row[:3], *(int(v) for v in row[3:])) for row in rows[: query.limit]]
    return rows, encode_cursor(query, rows[-1]) if more else None

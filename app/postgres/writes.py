"""Writing flushed windows into PostgreSQL: ledger claim, staging and additive upsert.

All of it runs in the flusher's one transaction per window
(docs/exactly-once.md): ``claim``, ``start_staging``, ``stage`` (any number
of times), ``upsert``, commit. ``upsert`` sums the staged rows once and adds
those sums into ``stats`` and into the four rollups (docs/stats-table.md,
"Rollups"), so the ledger claim covers the rollups too. A pair whose sums
cannot be added into ``stats`` is isolated in the quarantine
(``stats_quarantine``) in that same transaction instead of failing it
(docs/exactly-once.md, "Isolated rows"), and left out of the rollups.

The same functions write history imports (``stage_history``: rows of many
windows) and quarantine merges. The partitions of the rows' days must exist
before the transaction starts (``partitions.ensure``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime

from psycopg2 import errors
from psycopg2 import sql as pgsql
from psycopg2.extras import execute_values

from ..buffer.snapshots import Row, Snapshot, Unreadable
from .pool import Connection
from .statements import sql

logger = logging.getLogger(__name__)

MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True)
class Written:
    """What one transaction added to ``stats`` for one window."""

    rows: int = 0
    cdn: int = 0
    p2p: int = 0
    sessions: int = 0
    payloads: int = 0
    watch_ms: int = 0
    quarantined: int = 0  # pairs isolated instead of added (docs/exactly-once.md)

    def __add__(self, other: Written) -> Written:
        return Written(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def claim(conn: Connection, window_end: datetime, snapshots: Iterable[Snapshot]) -> set[str]:
    """Record ``snapshots`` in the ledger; return the ids this transaction owns.

    Ids already in the ledger were committed by an earlier (or concurrent)
    flush and must not be written again.
    """
    return claim_ids(conn, window_end, {s.id for s in snapshots})


def claim_ids(conn: Connection, window_end: datetime, ids: Iterable[str]) -> set[str]:
    """Record ledger ``ids`` (snapshots, import chunks) whose rows all end by
    ``window_end`` (retention deletes the ledger row with them); return the ids
    this transaction owns."""
    # One order for every flusher: two transactions claiming the same ids in
    # different orders would deadlock on each other's uncommitted rows.
    ids = sorted(set(ids))
    with conn.cursor() as cur:
        owned = execute_values(
            cur,
            sql("claim_snapshots"),
            [(i, window_end) for i in ids],
            fetch=True,
            page_size=max(1, len(ids)),
        )
    return {row[0] for row in owned}


def start_staging(conn: Connection, window_end: datetime | None = None) -> None:
    """Create the transaction's staging table; rows staged by ``stage`` get
    the time ``window_end``, rows staged by ``stage_history`` carry their own."""
    with conn.cursor() as cur:
        # Enough memory to sum a 100k-row window in a hash, not on disk.
        cur.execute("SET LOCAL work_mem = '64MB'")
        cur.execute(sql("create_staging"), {"time": window_end})


def stage(conn: Connection, rows: Iterable[Row]) -> None:
    """Bulk-load partial sums into the transaction's staging table (COPY)."""
    stage_text(conn, staging_text(rows))


def staging_text(rows: Iterable[Row]) -> str:
    """``rows`` as ``stage_text`` loads them (CSV); the flusher's readers build it
    while the main thread COPYs the batch before. A Row's fields are the
    columns of copy_staging.sql, in the same order."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def stage_text(conn: Connection, text: str) -> None:
    """Bulk-load rows written by ``staging_text``."""
    with conn.cursor() as cur:
        cur.copy_expert(sql("copy_staging"), io.StringIO(text))


def stage_history(conn: Connection, records: Iterable[Sequence[object]]) -> None:
    """Bulk-load rows that carry their own time: (time, customer, content,
    cdn, p2p, sessions, payloads, watch_ms), ``time`` a datetime or ISO text."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(records)
    buf.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert(sql("copy_staging_timed"), buf)


def stage_copy(conn: Connection, data: bytes) -> None:
    """Bulk-load rows already in the form ``stage_history`` writes (COPY CSV)."""
    with conn.cursor() as cur:
        cur.copy_expert(sql("copy_staging_timed"), io.BytesIO(data))


def _rollup(name: str, unit: str, *, single_window: bool) -> pgsql.Composed:
    """A per-(customer, content) rollup upsert: from the summed rows as they are
    when they hold one window (no second aggregation of 100k rows), grouped
    by bucket otherwise."""
    trunc = pgsql.SQL("date_trunc({}, time, 'UTC')").format(pgsql.Literal(unit))
    if single_window:
        rows = pgsql.SQL(
            "(SELECT {} AS bucket, customer, content, cdn, p2p, sessions, payloads, watch_ms "
            "FROM flush_sums)"
        ).format(trunc)
    else:
        rows = pgsql.SQL(
            "(SELECT {} AS bucket, customer, content, sum(cdn) AS cdn, sum(p2p) AS p2p, "
            "sum(sessions) AS sessions, sum(payloads) AS payloads, sum(watch_ms) AS watch_ms "
            "FROM flush_sums GROUP BY 1, 2, 3)"
        ).format(trunc)
    return pgsql.SQL(sql(name)).format(rows=rows)


def upsert(
    conn: Connection,
    window_end: datetime | None,
    snapshot_ids: Iterable[str],
    *,
    isolate_overflow: bool = True,
    between: Callable[[], None] = lambda: None,
    remember: bool = False,
) -> Written:
    """Add the staged sums into their ``stats`` rows and into the rollups, and
    empty the staging table (the flusher stages and upserts a large window in
    chunks, all in one transaction).

    The staged rows are summed once per (time, customer, content); ``stats``
    and each rollup are upserted from those sums. Pairs whose row would pass
    bigint go to the quarantine instead, with ``snapshot_ids`` (the ledger
    ids this transaction claimed); with ``isolate_overflow=False`` the
    upsert raises ``psycopg2.errors.NumericValueOutOfRange`` instead.
    ``between`` is called between the long statements (the flusher extends
    its lock there). With ``remember``, the pairs are remembered for
    ``remembered_rows``.
    """
    isolated = 0
    with conn.cursor() as cur:
        cur.execute(sql("sum_staged"))
        between()
        if not isolate_overflow:
            cur.execute(sql("upsert_stats"))
        else:
            cur.execute("SAVEPOINT upsert")
            try:
                cur.execute(sql("upsert_stats"))
            except errors.NumericValueOutOfRange:
                cur.execute("ROLLBACK TO SAVEPOINT upsert")
                cur.execute(sql("overflowing_pairs"))
                keys = cur.fetchall()
                isolated = isolate_staged(
                    conn, window_end, keys, snapshot_ids, "a sum past bigint in stats"
                )
                cur.execute(sql("upsert_stats"))
            cur.execute("RELEASE SAVEPOINT upsert")
        between()
        for name, unit in (("rollup_hourly", "hour"), ("rollup_daily", "day")):
            cur.execute(_rollup(name, unit, single_window=window_end is not None))
            between()
        for name in ("rollup_customer_hourly", "rollup_customer_daily"):
            cur.execute(sql(name))
            between()
        cur.execute(sql("staged_totals"))
        rows, cdn, p2p, sessions, payloads, watch_ms = (int(v) for v in cur.fetchone())
        if remember:
            cur.execute(sql("remember_pairs"))
        cur.execute("DROP TABLE flush_sums")
        cur.execute("TRUNCATE flush_staging")
    return Written(rows, cdn, p2p, sessions, payloads, watch_ms, isolated)


def remembered_rows(conn: Connection) -> int:
    """The distinct rows of every ``upsert(remember=True)`` of this transaction."""
    with conn.cursor() as cur:
        cur.execute(sql("count_pairs"))
        return int(cur.fetchone()[0])


def fits(row: Row) -> bool:
    """Whether every counter of ``row`` fits a bigint column."""
    return max(row.cdn, row.p2p, row.sessions, row.payloads, row.watch_ms) <= MAX_BIGINT


def isolate(
    conn: Connection,
    window_end: datetime,
    items: Sequence[Row | Unreadable],
    snapshot_ids: Iterable[str],
) -> int:
    """Put snapshot rows that cannot go into ``stats`` into the quarantine."""
    if not items:
        return 0
    ids = sorted(snapshot_ids)
    values = []
    for item in items:
        if isinstance(item, Unreadable):
            raw = item.ident + b"\n" + repr(sorted(item.fields.items())).encode()
            values.append(
                (window_end, None, None, 0, 0, 0, 0, 0, raw, f"unreadable: {item.reason}", ids)
            )
        else:
            values.append(
                (window_end, item.customer, item.content, item.cdn, item.p2p, item.sessions,
                 item.payloads, item.watch_ms, None, "a counter past bigint in Redis", ids)
            )  # fmt: skip
    with conn.cursor() as cur:
        execute_values(cur, sql("quarantine_insert"), values)
    _log(window_end, len(values), values[0][-2])
    return len(values)


def isolate_staged(
    conn: Connection,
    window_end: datetime | None,
    keys: Sequence[tuple[datetime, str, str]],
    snapshot_ids: Iterable[str],
    reason: str,
) -> int:
    """Move the summed staged rows of ``keys`` (time, customer, content) into
    the quarantine; they are then in neither ``stats`` nor the rollups."""
    if not keys:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            sql("quarantine_staged"),
            {
                "times": [k[0] for k in keys],
                "customers": [k[1] for k in keys],
                "contents": [k[2] for k in keys],
                "reason": reason,
                "snapshot_ids": sorted(snapshot_ids),
            },
        )
    _log(window_end or min(k[0] for k in keys), len(keys), reason)
    return len(keys)


def _log(window_end: datetime, count: int, reason: str) -> None:
    logger.error(
        "flush_quarantined",
        extra={"window_end": window_end.isoformat(), "rows": count, "reason": reason},
    )

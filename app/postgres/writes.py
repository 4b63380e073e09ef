"""Writing flushed windows into PostgreSQL: ledger claim, staging and additive upsert.

All of it runs in the flusher's one transaction per window
(docs/exactly-once.md). A pair whose sums cannot be added into ``stats``
is isolated in the quarantine (``stats_quarantine``) in that same
transaction instead of failing it (docs/exactly-once.md, "Isolated rows").
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg2 import errors
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


def claim(conn: Connection, window_end: datetime, snapshots: Iterable[Snapshot]) -> set[str]:
    """Record ``snapshots`` in the ledger; return the ids this transaction owns.

    Ids already in the ledger were committed by an earlier (or concurrent)
    flush and must not be written again.
    """
    # One order for every flusher: two transactions claiming the same ids in
    # different orders would deadlock on each other's uncommitted rows.
    ids = sorted({s.id for s in snapshots})
    with conn.cursor() as cur:
        owned = execute_values(
            cur,
            sql("claim_snapshots"),
            [(i, window_end) for i in ids],
            fetch=True,
            page_size=max(1, len(ids)),
        )
    return {row[0] for row in owned}


def start_staging(conn: Connection) -> None:
    with conn.cursor() as cur:
        # Enough memory to sum a 100k-row window in a hash, not on disk.
        cur.execute("SET LOCAL work_mem = '64MB'")
        cur.execute(sql("create_staging"))


def stage(conn: Connection, rows: Iterable[Row]) -> None:
    """Bulk-load partial sums into the transaction's staging table (COPY)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in rows:
        writer.writerow((r.customer, r.content, r.cdn, r.p2p, r.sessions, r.payloads, r.watch_ms))
    buf.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert(sql("copy_staging"), buf)


def upsert(conn: Connection, window_end: datetime, snapshot_ids: Iterable[str]) -> Written:
    """Add the staged sums into ``stats`` rows of ``window_end``.

    Pairs whose row would pass bigint go to the quarantine instead, with
    ``snapshot_ids`` (the snapshots this transaction claimed).
    """
    isolated = 0
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT upsert")
        try:
            cur.execute(sql("upsert_stats"), {"time": window_end})
        except errors.NumericValueOutOfRange:
            cur.execute("ROLLBACK TO SAVEPOINT upsert")
            cur.execute(sql("overflowing_pairs"), {"time": window_end})
            pairs = cur.fetchall()
            isolated = isolate_staged(
                conn, window_end, pairs, snapshot_ids, "a sum past bigint in stats"
            )
            cur.execute(sql("upsert_stats"), {"time": window_end})
        cur.execute("RELEASE SAVEPOINT upsert")
        cur.execute(sql("staged_totals"))
        rows, cdn, p2p, sessions, payloads, watch_ms = (int(v) for v in cur.fetchone())
    return Written(rows, cdn, p2p, sessions, payloads, watch_ms, isolated)


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
    window_end: datetime,
    pairs: Sequence[tuple[str, str]],
    snapshot_ids: Iterable[str],
    reason: str,
) -> int:
    """Move the staged sums of ``pairs`` into the quarantine."""
    if not pairs:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            sql("quarantine_staged"),
            {
                "time": window_end,
                "customers": [p[0] for p in pairs],
                "contents": [p[1] for p in pairs],
                "reason": reason,
                "snapshot_ids": sorted(snapshot_ids),
            },
        )
    _log(window_end, len(pairs), reason)
    return len(pairs)


def _log(window_end: datetime, count: int, reason: str) -> None:
    logger.error(
        "flush_quarantined",
        extra={"window_end": window_end.isoformat(), "rows": count, "reason": reason},
    )

"""Writing flushed windows into PostgreSQL: ledger claim and additive upsert."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from psycopg2.extras import execute_values

from ..buffer.snapshots import Row, Snapshot
from .pool import Connection
from .statements import sql


@dataclass(frozen=True)
class Written:
    """What one transaction added to ``stats`` for one window."""

    rows: int = 0
    cdn: int = 0
    p2p: int = 0
    sessions: int = 0
    payloads: int = 0


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
        writer.writerow((r.customer, r.content, r.cdn, r.p2p, r.sessions, r.payloads))
    buf.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert(sql("copy_staging"), buf)


def upsert(conn: Connection, window_end: datetime) -> Written:
    """Add the staged sums into ``stats`` rows of ``window_end``."""
    with conn.cursor() as cur:
        cur.execute(sql("upsert_stats"), {"time": window_end})
        cur.execute(sql("staged_totals"))
        rows, cdn, p2p, sessions, payloads = cur.fetchone()
    return Written(rows, cdn, p2p, sessions, payloads)

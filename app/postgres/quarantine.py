"""The quarantine, for operators: listing, merging and discarding isolated rows.

A pair whose row in ``stats`` would pass bigint, or a Redis key that does not
read as a row, must not stop the flush of every other pair, window and
customer (docs/exactly-once.md, "Isolated rows"). The flusher moves it into
``stats_quarantine`` (``writes.isolate``), exactly (numeric columns), in the
same transaction as its snapshot's ledger row, so it is still counted exactly
once: in ``stats`` or there. ``payload-stats quarantine`` resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from psycopg2 import errors
from psycopg2.pool import ThreadedConnectionPool

from ..buffer.snapshots import Row
from . import partitions, writes
from .pool import connection
from .statements import sql


class QuarantineError(Exception):
    """An isolated row cannot be resolved as asked; the message says why."""


@dataclass(frozen=True)
class Isolated:
    id: int
    time: datetime
    customer: str | None
    content: str | None
    cdn: int
    p2p: int
    sessions: int
    payloads: int
    watch_ms: int
    reason: str
    quarantined_at: datetime


def unresolved(pool: ThreadedConnectionPool) -> list[Isolated]:
    """Every isolated row not resolved yet, oldest first. Raises psycopg2.Error."""
    with connection(pool) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(sql("quarantine_unresolved"))
                return [Isolated(*(_int(v) for v in row)) for row in cur.fetchall()]
        finally:
            conn.rollback()


def count_unresolved(pool: ThreadedConnectionPool) -> int:
    """How many isolated rows wait for an operator. Raises psycopg2.Error."""
    with connection(pool) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM stats_quarantine WHERE resolved_at IS NULL")
                return cur.fetchone()[0]
        finally:
            conn.rollback()


def merge(pool: ThreadedConnectionPool, row_id: int) -> None:
    """Add an isolated row into ``stats`` and its rollups (its row has room
    again) and mark it resolved, in one transaction, through the flush's
    write path. Raises QuarantineError when it cannot be."""
    with connection(pool) as conn:
        with conn, conn.cursor() as cur:
            cur.execute(sql("quarantine_take"), {"id": row_id})
            found = cur.fetchone()
        if found is not None:
            partitions.ensure(conn, [partitions.day_of(found[0])])
        with conn, conn.cursor() as cur:
            cur.execute(sql("quarantine_take"), {"id": row_id})
            found = cur.fetchone()
            if found is None:
                raise QuarantineError(f"no unresolved isolated row {row_id}")
            time, customer, content, *counters = found
            if customer is None:
                raise QuarantineError(f"row {row_id} did not read as a name: discard it")
            try:
                writes.start_staging(conn, time)
                writes.stage(conn, [Row(customer, content, *(int(v) for v in counters))])
                writes.upsert(conn, time, [], isolate_overflow=False)
            except errors.NumericValueOutOfRange:
                raise QuarantineError(
                    f"row {row_id} still does not fit: it would pass bigint"
                ) from None
            cur.execute(
                sql("quarantine_resolve"), {"id": row_id, "resolution": "merged into stats"}
            )


def discard(pool: ThreadedConnectionPool, row_id: int, reason: str) -> None:
    """Mark an isolated row resolved without adding it; it stays for the record.
    Raises QuarantineError when there is no such unresolved row."""
    with connection(pool) as conn, conn, conn.cursor() as cur:
        cur.execute(sql("quarantine_take"), {"id": row_id})
        if cur.fetchone() is None:
            raise QuarantineError(f"no unresolved isolated row {row_id}")
        cur.execute(sql("quarantine_resolve"), {"id": row_id, "resolution": f"discarded: {reason}"})


def _int(value: object) -> object:
    # numeric columns arrive as Decimal; they hold whole numbers.
    return int(value) if isinstance(value, Decimal) else value

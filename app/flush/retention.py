"""Retention: deleting stats rows older than STATS_RETENTION_DAYS, in bounded batches."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from psycopg2.pool import ThreadedConnectionPool

from ..postgres.pool import connection
from ..postgres.statements import sql

logger = logging.getLogger(__name__)

BATCH = 10_000


def prune(pool: ThreadedConnectionPool, days: int, now: float, batch: int = BATCH) -> int:
    """Delete rows (and ledger entries) older than ``days``; return the rows deleted.

    Each batch is its own short transaction, so a large backlog never holds
    long locks or one huge transaction. Raises psycopg2.Error.
    """
    before = datetime.fromtimestamp(now, tz=timezone.utc) - timedelta(days=days)
    deleted = 0
    with connection(pool) as conn:
        for name in ("prune_stats", "prune_ledger"):
            while True:
                with conn, conn.cursor() as cur:
                    cur.execute(sql(name), {"before": before, "batch": batch})
                    count = cur.rowcount
                if name == "prune_stats":
                    deleted += count
                if count < batch:
                    break
    logger.info("retention", extra={"deleted": deleted, "before": before.isoformat()})
    return deleted

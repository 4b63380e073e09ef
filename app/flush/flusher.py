"""Flushing closed windows from Redis into PostgreSQL, exactly once (docs/exactly-once.md).

The recipe, per run:

1. Connect to PostgreSQL first, so an outage freezes nothing.
2. Freeze every closed window of every shard into a snapshot named by this
   run's flush id (one atomic script call per shard and window).
3. For each window, with the snapshots left by earlier runs: make sure the
   partition of its day exists (a short transaction of its own), then in ONE
   transaction, claim the snapshots in the ledger (the ones already there
   were committed before and are skipped), collect their rows from Redis,
   stage them with COPY, add them into ``stats`` and its rollups, and commit.
4. Only then delete the snapshots from Redis.

A crash anywhere leaves either live data, a snapshot (re-driven by the next
run) or a committed snapshot (which the ledger turns into a no-op). The
Redis lock only saves duplicate work; correctness rests on the ledger.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from psycopg2.pool import ThreadedConnectionPool
from redis import Redis

from ..buffer import snapshots
from ..buffer.scripts import Scripts
from ..buffer.snapshots import Row, Snapshot
from ..config import Config
from ..postgres import partitions, writes
from ..postgres.pool import connection
from ..windows import last_closed_window, window_end, window_end_datetime
from .failpoints import Failpoint, no_failpoint
from .prefetch import prefetched_map

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

FIRST_CHUNK_ROWS = 5000  # then twice the last, up to STATS_FLUSH_CHUNK_ROWS
MAX_ROWS_AHEAD = 100_000  # read ahead at most (as COPY text, ~60 B a row), whatever the chunk


@dataclass(frozen=True)
class WindowReport:
    end: datetime
    snapshots: int
    written: writes.Written
    lag_seconds: float


@dataclass
class FlushReport:
    flush_id: str
    windows: list[WindowReport] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(w.written.rows for w in self.windows)

    def total(self, name: str) -> int:
        return sum(getattr(w.written, name) for w in self.windows)


def new_flush_id(now: float) -> str:
    """Unique for all time: snapshot keys and ledger ids are derived from it."""
    return f"{int(now)}-{secrets.token_hex(6)}"


def flush_once(
    redis: Redis,
    pool: ThreadedConnectionPool,
    config: Config,
    clock: Clock = time.time,
    *,
    scripts: Scripts | None = None,
    failpoint: Failpoint = no_failpoint,
    on_progress: Callable[[], None] = lambda: None,
) -> FlushReport:
    """Move every closed window from Redis into PostgreSQL, exactly once.

    ``on_progress`` is called between batches (the scheduler extends its lock
    there). Raises psycopg2.Error or redis.RedisError when a server fails;
    whatever was not committed stays in Redis for the next run.
    """
    started = time.monotonic()
    now = clock()
    scripts = scripts or Scripts(redis)
    report = FlushReport(flush_id=new_flush_id(now))
    length = config.window_seconds

    with connection(pool) as conn:
        by_window: dict[int, list[Snapshot]] = defaultdict(list)
        for snap in snapshots.pending_snapshots(redis, config):
            by_window[snap.k].append(snap)

        last_closed = last_closed_window(now, length, config.flush_grace_seconds)
        for shard in range(config.shards):
            for k in snapshots.closed_windows(redis, config, shard, last_closed):
                snap = Snapshot(k=k, shard=shard, flush_id=report.flush_id)
                if snapshots.freeze(redis, scripts, config, snap):
                    by_window[k].append(snap)
        failpoint("after_freeze")

        for k in sorted(by_window):
            written = _write_window(
                redis, scripts, conn, config, k, by_window[k], failpoint, on_progress
            )
            failpoint("after_commit")
            for snap in by_window[k]:
                snapshots.release(redis, config, snap, prefetched_map)
            on_progress()
            report.windows.append(
                WindowReport(
                    end=window_end_datetime(k, length),
                    snapshots=len(by_window[k]),
                    written=written,
                    lag_seconds=round(clock() - window_end(k, length), 3),
                )
            )

    report.duration_seconds = round(time.monotonic() - started, 3)
    _log(report)
    return report


def _write_window(
    redis: Redis,
    scripts: Scripts,
    conn,
    config: Config,
    k: int,
    window_snapshots: list[Snapshot],
    failpoint: Failpoint,
    on_progress: Callable[[], None],
) -> writes.Written:
    """One transaction: claim the snapshots, stage their rows, upsert, commit.

    What cannot go into ``stats`` is isolated in the same transaction, so one
    bad key never blocks the window, nor the windows after it.
    """
    end = window_end_datetime(k, config.window_seconds)
    # Before the transaction: attaching a partition inside it would hold its
    # lock until the commit (docs/stats-table.md, "Partitions").
    partitions.ensure(conn, [partitions.day_of(end)])
    with conn:  # commits on success, rolls back on any exception
        owned = writes.claim(conn, end, window_snapshots)
        if not owned:
            return writes.Written()
        writes.start_staging(conn, end)
        isolated = []
        tasks = [
            (snap, start)
            for snap in window_snapshots
            if snap.id in owned
            for start in snapshots.batch_starts(redis, config, snap)
        ]

        def read(task: tuple[Snapshot, int]) -> tuple[str, int, list]:
            """A batch as staging text, its row count, and what cannot be staged."""
            batch = snapshots.read_batch(redis, scripts, config, *task)
            rows = [r for r in batch if isinstance(r, Row) and writes.fits(r)]
            bad = []
            if len(rows) < len(batch):
                bad = [r for r in batch if not (isinstance(r, Row) and writes.fits(r))]
            return writes.staging_text(rows), len(rows), bad

        # A large window is added in chunks: each statement stays short (under
        # the flush's statement timeout, with the lock extended in between),
        # and the readers fill the next chunk while PostgreSQL adds this one.
        # Chunks start small and double: reading the first overlaps nothing.
        written = writes.Written()
        staged = chunks = 0
        ahead_rows = min(config.flush_chunk_rows, MAX_ROWS_AHEAD)
        ahead = min(256, max(4, -(-ahead_rows // config.flush_batch_size) + 2))
        for text, count, bad in prefetched_map(read, tasks, depth=ahead):
            isolated += bad
            writes.stage_text(conn, text)
            staged += count
            failpoint("mid_batch")
            on_progress()
            if staged >= min(config.flush_chunk_rows, FIRST_CHUNK_ROWS << chunks):
                written += writes.upsert(conn, end, owned, between=on_progress, remember=True)
                staged, chunks = 0, chunks + 1
        quarantined = writes.isolate(conn, end, isolated, owned)
        written += writes.upsert(conn, end, owned, between=on_progress, remember=chunks > 0)
        if chunks:  # a pair may have been added in two chunks: count it once
            written = replace(written, rows=writes.remembered_rows(conn))
        return replace(written, quarantined=written.quarantined + quarantined)


def _log(report: FlushReport) -> None:
    if not report.windows:
        logger.debug("flush", extra={"flush_id": report.flush_id, "windows": 0})
        return
    logger.info(
        "flush",
        extra={
            "flush_id": report.flush_id,
            "windows": len(report.windows),
            "rows": report.rows,
            "cdn": report.total("cdn"),
            "p2p": report.total("p2p"),
            "sessions": report.total("sessions"),
            "payloads": report.total("payloads"),
            "watch_ms": report.total("watch_ms"),
            "quarantined": report.total("quarantined"),
            "duration_ms": round(report.duration_seconds * 1000),
            "lag_s": max(w.lag_seconds for w in report.windows),
        },
    )

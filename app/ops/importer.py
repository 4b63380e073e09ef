"""``payload-stats import``: history from a previous system, into ``stats`` and the
rollups through the flush's write path, exactly once.

The file is CSV with the header ``time,customer,content,cdn,p2p,sessions,payloads``
and an optional ``watch_ms`` column. Two passes:

1. Every line is checked (``parse_line``); the file is copied meanwhile into a
   temporary spool in the form COPY reads, and hashed (SHA-256 of its bytes).
   One bad line rejects the whole file: every bad line is reported with its
   number, and nothing is written.
2. The rows are written in chunks of ``CHUNK_ROWS`` lines, one transaction
   each, which claims ``import:<sha256>:<chunk>`` in ``flush_ledger`` like a
   flush claims a snapshot. Importing the same file again finds every chunk
   claimed and adds nothing; an import that was interrupted adds the chunks
   it had not committed yet when it is run again.

Rows with the same time, customer and content add up, like payloads do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import IO

from psycopg2.pool import ThreadedConnectionPool

from ..config import Config
from ..flush.retention import cut
from ..postgres import partitions, writes
from ..postgres.pool import connection
from ..windows import window_end, window_index

COLUMNS = ("time", "customer", "content", "cdn", "p2p", "sessions", "payloads")
WATCH = "watch_ms"
# Part of every chunk's ledger id: changing it would let a file that was
# imported before be imported again. Never change it.
CHUNK_ROWS = 50_000
MAX_NAME = 256
MAX_BIGINT = 2**63 - 1
SHOWN_ERRORS = 20

# 2026-11-26T10:05:00Z, with T or a space, optional zero fraction, and a UTC designator.
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.0+)?(?:Z|z|[+-]00(?::?00)?)")
_DIGITS = re.compile(r"[0-9]{1,19}")

Progress = Callable[[str, int, int], None]  # (phase, done, total)


class BadLine(ValueError):
    """A line that cannot be imported; the message says why."""


@dataclass
class Rejected(Exception):
    """The file was refused; nothing was written."""

    errors: list[tuple[int, str]]  # (line number, message), the first SHOWN_ERRORS
    bad_lines: int

    def __str__(self) -> str:
        return f"{self.bad_lines} bad line(s); nothing was imported"


@dataclass
class Chunk:
    start: int  # byte offset in the spool
    end: int
    rows: int
    days: set[date] = field(default_factory=set)
    last: datetime | None = None  # latest time: the ledger row's window_end


@dataclass
class ImportReport:
    sha256: str
    rows: int
    chunks: int
    written_chunks: int
    written_rows: int
    isolated: int
    seconds: float

    @property
    def already(self) -> bool:
        return self.rows > 0 and self.written_chunks == 0


class Checker:
    """Parses and checks lines against the deployment's window length, the
    retention cut and the clock."""

    def __init__(self, config: Config, now: float) -> None:
        self.length = config.window_seconds
        self.oldest = cut(now, config.retention_days) if config.retention_days else None
        # The end of the window open now: later times cannot have been counted yet.
        self.newest = window_end(window_index(now, self.length), self.length)
        self._last_time: tuple[str, datetime] | None = None

    def header(self, cells: list[str]) -> bool:
        """Whether the file has the watch_ms column. Raises BadLine."""
        if tuple(cells) == COLUMNS:
            return False
        if tuple(cells) == (*COLUMNS, WATCH):
            return True
        raise BadLine(
            f"the header must be {','.join(COLUMNS)} (optionally followed by ,{WATCH}), "
            f"not {','.join(cells)!r}"
        )

    def time(self, text: str) -> datetime:
        if self._last_time is not None and self._last_time[0] == text:
            return self._last_time[1]
        match = _TIME.fullmatch(text)
        if not match:
            raise BadLine(f"time: {text!r} is not an ISO 8601 UTC time like 2026-11-26T10:05:00Z")
        try:
            moment = datetime(*(int(g) for g in match.groups()), tzinfo=timezone.utc)
        except ValueError as exc:
            raise BadLine(f"time: {text!r}: {exc}") from None
        seconds = int(moment.timestamp())
        if seconds % self.length:
            raise BadLine(
                f"time: {text!r} is not a window end (a multiple of "
                f"STATS_WINDOW_SECONDS={self.length} s since 1970-01-01T00:00:00Z)"
            )
        if seconds > self.newest:
            raise BadLine(f"time: {text!r} is in the future")
        if self.oldest is not None and moment < self.oldest:
            raise BadLine(
                f"time: {text!r} is before the retention cut {self.oldest:%Y-%m-%dT%H:%M:%SZ} "
                "(STATS_RETENTION_DAYS): retention would drop it"
            )
        self._last_time = (text, moment)
        return moment

    def parse_line(self, cells: list[str], watch: bool) -> tuple:
        """(time, customer, content, cdn, p2p, sessions, payloads, watch_ms). Raises BadLine."""
        width = len(COLUMNS) + watch
        if len(cells) != width:
            raise BadLine(f"{len(cells)} fields, expected {width}")
        moment = self.time(cells[0])
        for name, value in (("customer", cells[1]), ("content", cells[2])):
            if not 0 < len(value) <= MAX_NAME:
                raise BadLine(f"{name}: must be 1 to {MAX_NAME} characters")
            if not value.isprintable():
                raise BadLine(f"{name}: must be printable text (no control characters)")
        numbers = []
        for name, value in zip((*COLUMNS[3:], WATCH), cells[3:], strict=False):
            if not _DIGITS.fullmatch(value) or int(value) > MAX_BIGINT:
                raise BadLine(f"{name}: {value!r} is not an integer from 0 to 2^63-1")
            numbers.append(int(value))
        if numbers[3] < 1:
            raise BadLine("payloads: a row counts at least one payload")
        if not watch:
            numbers.append(0)
        return (moment, cells[1], cells[2], *numbers)


def _cells(raw: bytes) -> list[str]:
    """The fields of one physical line (a name holds no line break: printable)."""
    text = raw.decode("utf-8").rstrip("\r\n")
    if '"' not in text:
        return text.split(",")
    try:
        [cells] = list(csv.reader([text], strict=True))
    except (csv.Error, ValueError):
        raise BadLine("not a CSV record (unbalanced quotes?)") from None
    return cells


def validate(
    stream: IO[bytes], checker: Checker, spool: IO[bytes], progress: Progress | None = None
) -> tuple[str, list[Chunk]]:
    """Pass 1: check every line, write the rows into ``spool`` as COPY CSV,
    cut into chunks of CHUNK_ROWS rows. Returns (sha256, chunks). Raises Rejected."""
    digest = hashlib.sha256()
    errors: list[tuple[int, str]] = []
    bad = 0
    chunks: list[Chunk] = []
    chunk = Chunk(start=0, end=0, rows=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    watch: bool | None = None

    def close_chunk() -> None:
        nonlocal chunk
        if chunk.rows:
            spool.write(buf.getvalue().encode())
            chunk.end = spool.tell()
            chunks.append(chunk)
            chunk = Chunk(start=chunk.end, end=chunk.end, rows=0)
        buf.seek(0)
        buf.truncate()

    for number, raw in enumerate(stream, start=1):
        digest.update(raw)
        try:
            cells = _cells(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw)
            if number == 1:
                watch = checker.header(cells)
                continue
            if cells == [""]:
                continue  # an empty line
            row = checker.parse_line(cells, bool(watch))
        except (BadLine, UnicodeDecodeError) as exc:
            bad += 1
            if len(errors) < SHOWN_ERRORS:
                message = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
                errors.append((number, message))
            continue
        if progress and number % 100_000 == 0:
            progress("checked", number, 0)
        if bad:
            continue  # rejected already: the remaining lines are only checked
        writer.writerow((row[0].isoformat(), *row[1:]))
        chunk.rows += 1
        chunk.days.add(row[0].date())
        if chunk.last is None or row[0] > chunk.last:
            chunk.last = row[0]
        if chunk.rows == CHUNK_ROWS:
            close_chunk()
    if watch is None and not bad:
        errors.append((1, "the file is empty: it needs a header line"))
        bad = 1
    if bad:
        raise Rejected(errors, bad)
    close_chunk()
    spool.flush()
    return digest.hexdigest(), chunks


def write(
    pool: ThreadedConnectionPool,
    sha256: str,
    chunks: list[Chunk],
    spool: IO[bytes],
    progress: Progress | None = None,
) -> tuple[int, int, int]:
    """Pass 2: each chunk in its own transaction, claimed in the ledger.
    Returns (chunks written, rows written, rows isolated). Raises psycopg2.Error."""
    written = rows = isolated = 0
    total = sum(c.rows for c in chunks)
    done = 0
    with connection(pool) as conn:
        for i, chunk in enumerate(chunks):
            partitions.ensure(conn, chunk.days)
            with conn:
                if writes.claim_ids(conn, chunk.last, [f"import:{sha256}:{i}"]):
                    spool.seek(chunk.start)
                    data = spool.read(chunk.end - chunk.start)
                    writes.start_staging(conn)
                    writes.stage_copy(conn, data)
                    result = writes.upsert(conn, None, [f"import:{sha256}:{i}"])
                    written += 1
                    rows += chunk.rows
                    isolated += result.quarantined
            done += chunk.rows
            if progress:
                progress("written", done, total)
    return written, rows, isolated


def import_file(
    pool: ThreadedConnectionPool,
    config: Config,
    stream: IO[bytes],
    *,
    now: float | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Check all of ``stream``, then write it exactly once. Raises Rejected
    (nothing written) or psycopg2.Error (run it again: committed chunks are
    not written twice)."""
    started = time.monotonic()
    checker = Checker(config, time.time() if now is None else now)
    with tempfile.TemporaryFile(prefix="payload-stats-import-") as spool:
        sha256, chunks = validate(stream, checker, spool, progress)
        written, rows, isolated = write(pool, sha256, chunks, spool, progress)
    return ImportReport(
        sha256=sha256,
        rows=sum(c.rows for c in chunks),
        chunks=len(chunks),
        written_chunks=written,
        written_rows=rows,
        isolated=isolated,
        seconds=round(time.monotonic() - started, 3),
    )

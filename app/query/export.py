"""History rows as records: the JSON objects of GET /stats and its CSV lines.

One place decides the columns and their values, for GET /stats (JSON or
``text/csv``) and ``payload-stats export`` alike: time (the window end, or the
bucket start), the grouped names, the five counters, ``avg_viewers`` (watch
time over the bucket's length: docs/stats-table.md, "Watch time and average
viewers") and ``p2p_share``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from psycopg2.pool import ThreadedConnectionPool

from ..buffer.live import p2p_share
from . import history
from .history_params import GROUPS, Query

CSV_TYPE = "text/csv; charset=utf-8"


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def columns(query: Query) -> list[str]:
    by_customer, by_content = GROUPS.get(query.group_by, (True, True))
    names = ["time"]
    if by_customer:
        names.append("customer")
    if by_content:
        names.append("content")
    return names + [*history.COUNTERS, "avg_viewers", "p2p_share"]


def record(query: Query, row: history.Row, window_seconds: int) -> dict[str, Any]:
    """The JSON object of one row: integers exact, avg_viewers and p2p_share
    rounded to 6 decimal places."""
    t, customer, content, cdn, p2p, sessions, payloads, watch_ms = row
    by_customer, by_content = GROUPS.get(query.group_by, (True, True))
    out: dict[str, Any] = {"time": iso(t)}
    if by_customer:
        out["customer"] = customer
    if by_content:
        out["content"] = content
    share = p2p_share(cdn, p2p)
    viewers = history.avg_viewers(watch_ms, history.bucket_ms(query.bucket, t, window_seconds))
    out.update(
        cdn=cdn,
        p2p=p2p,
        sessions=sessions,
        payloads=payloads,
        watch_ms=watch_ms,
        avg_viewers=float(viewers),
        p2p_share=None if share is None else round(share, 6),
    )
    return out


def csv_cells(query: Query, row: history.Row, window_seconds: int) -> list[Any]:
    """One CSV line's cells, in ``columns(query)`` order: avg_viewers exact to 6
    places in plain decimal notation, an empty p2p_share cell when there were
    no bytes."""
    values = record(query, row, window_seconds)
    t, _, _, cdn, p2p, _, _, watch_ms = row
    viewers = history.avg_viewers(watch_ms, history.bucket_ms(query.bucket, t, window_seconds))
    values["avg_viewers"] = _plain(viewers)
    share = values["p2p_share"]
    values["p2p_share"] = "" if share is None else _plain(Decimal(repr(share)))
    return [values[name] for name in columns(query)]


def _plain(number: Decimal) -> str:
    """1.500000 -> 1.5, 10.000000 -> 10, 0.000003 -> 0.000003 (never 3E-6)."""
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def csv_text(
    query: Query, row_pages: Iterable[list[history.Row]], window_seconds: int
) -> Iterator[str]:
    """The header line, then one chunk of lines per page of rows (RFC 4180
    quoting: a name holding a comma or a quote is quoted, quotes doubled)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns(query))
    yield buf.getvalue()
    for rows in row_pages:
        buf.seek(0)
        buf.truncate()
        writer.writerows(csv_cells(query, r, window_seconds) for r in rows)
        yield buf.getvalue()


def csv_stream(pool: ThreadedConnectionPool, query: Query, window_seconds: int) -> Iterator[str]:
    """Every row of ``query`` (from its cursor on) as CSV text, read a page at a
    time. The first page is read before the first chunk is produced, so a
    database that is down fails the call, not the middle of the answer."""
    row_pages = history.pages(pool, query)
    first = next(row_pages, None)
    chunks = csv_text(query, _chain(first, row_pages), window_seconds)
    header = next(chunks)

    def stream() -> Iterator[str]:
        yield header
        yield from chunks

    return stream()


def _chain(first: list | None, rest: Iterator[list]) -> Iterator[list]:
    if first is None:
        return
    yield first
    yield from rest

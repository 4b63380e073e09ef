"""GET /stats (history from PostgreSQL) and GET /stats/live (counters in Redis)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone

import psycopg2
from flask import Response, current_app, g, jsonify, request
from redis.exceptions import RedisError

from ..buffer import live
from ..postgres.pool import is_timeout
from ..web.auth import require_bearer
from ..web.docs import Blueprint, error_responses
from ..web.errors import InvalidParameter, Unavailable
from . import export, history, history_params
from .live_params import LiveArgs, LiveQuery

logger = logging.getLogger(__name__)

bp = Blueprint("query", __name__, description="Reading the numbers back")


@bp.before_request
def authenticate() -> None:
    # Before the parameters are parsed: a stranger learns nothing from a 400.
    require_bearer(current_app.extensions["payload_stats"].config.api_token)


@bp.before_request
def take_read_slot() -> None:
    # Reads never queue for a thread: past STATS_READ_CONCURRENCY at once in this
    # worker they are refused at once, so the other threads stay free for ingest.
    if not current_app.extensions["payload_stats"].read_slots.acquire(blocking=False):
        raise Unavailable("Too many reads in progress; retry shortly.")
    g.read_slot = True


@bp.teardown_request
def give_read_slot(exc: BaseException | None) -> None:
    if g.pop("read_slot", False):
        current_app.extensions["payload_stats"].read_slots.release()


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _share(cdn: int, p2p: int) -> float | None:
    share = live.p2p_share(cdn, p2p)
    return None if share is None else round(share, 6)


@bp.get("/stats")
@bp.arguments(history_params.HistoryArgs, location="query", as_kwargs=False)
@bp.doc(
    security=[{"bearer": []}],
    responses={
        200: {
            "description": 'One page of rows: {"rows": [...], "next": cursor or null}; with '
            "`format=csv` or `Accept: text/csv`, every matching row as CSV (streamed)",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        },
        **error_responses(400, 401, 503),
    },
)
def get_history(query: history_params.Query):
    """Stats history from PostgreSQL, one page at a time, or all of it as CSV."""
    services = current_app.extensions["payload_stats"]
    if services.pool is None:
        raise Unavailable("DATABASE_URL is not set for this web process.")
    window = services.config.window_seconds
    try:
        if _wants_csv(query):
            chunks = export.csv_stream(services.pool, query, window)
            # The read slot is held until the last page is sent, not given back
            # when the view returns (the body streams after that).
            response = Response(_guarded(chunks), content_type=export.CSV_TYPE)
            if g.pop("read_slot", False):
                response.call_on_close(services.read_slots.release)
            return response
        rows, cursor = history.fetch(services.pool, query)
    except psycopg2.DataError as exc:  # a value PostgreSQL cannot represent
        raise InvalidParameter({"query": [" ".join(str(exc).split())]}) from None
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split())
        if is_timeout(exc):
            # A locked or overloaded table: STATS_PG_STATEMENT_TIMEOUT_MS or
            # STATS_PG_LOCK_TIMEOUT_MS expired, the statement was cancelled.
            logger.warning("postgres_timeout", extra={"reason": reason})
            raise Unavailable("The stats database did not answer in time; retry shortly.") from None
        # Down, or not migrated yet (payload-stats init-db): nothing the client did.
        logger.warning("postgres_unavailable", extra={"reason": reason})
        raise Unavailable("The stats database is unavailable; retry shortly.") from None
    return jsonify(rows=[export.record(query, r, window) for r in rows], next=cursor)


def _wants_csv(query: history_params.Query) -> bool:
    if query.format is not None:
        return query.format == "csv"
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv"


def _guarded(chunks: Iterator[str]) -> Iterator[str]:
    """The CSV chunks; a database failure after the first page ends the answer
    early (the status line is sent already) and is logged."""
    try:
        yield from chunks
    except psycopg2.Error as exc:
        logger.warning("csv_export_aborted", extra={"reason": " ".join(str(exc).split())})
        raise


@bp.get("/stats/live")
@bp.arguments(LiveArgs, location="query", as_kwargs=False)
@bp.doc(
    security=[{"bearer": []}],
    responses={
        200: {
            "description": 'The top rows by traffic: {"rows": [...], "truncated": bool, '
            '"matched": rows found, "counters": counter hashes in Redis, "counters_read": '
            'of which read (at most STATS_LIVE_MAX_KEYS), "windows": the sums of every '
            "matched row per window, oldest first}"
        },
        **error_responses(400, 401, 503),
    },
)
def get_live(query: LiveQuery):
    """Counters still in Redis (the open window and windows not yet flushed):
    the rows with the most traffic (cdn + p2p) first."""
    services = current_app.extensions["payload_stats"]
    try:
        found = live.top_rows(
            services.redis,
            services.config,
            customer=query.customer,
            content=query.content,
            search=query.search,
            limit=query.limit,
        )
    except RedisError as exc:
        logger.warning("redis_unavailable", extra={"reason": str(exc)})
        raise Unavailable("The stats buffer is unavailable; retry shortly.") from None
    return jsonify(
        rows=[
            {
                "time": _iso(datetime.fromtimestamp(r.time, tz=timezone.utc)),
                "customer": r.customer,
                "content": r.content,
                "cdn": r.cdn,
                "p2p": r.p2p,
                "sessions": r.sessions,
                "payloads": r.payloads,
                "watch_ms": r.watch_ms,
                "p2p_share": _share(r.cdn, r.p2p),
            }
            for r in found.rows
        ],
        truncated=found.truncated,
        matched=found.matched,
        counters=found.counters,
        counters_read=found.counters_read,
        windows=[
            {
                "time": _iso(datetime.fromtimestamp(w.time, tz=timezone.utc)),
                "cdn": w.cdn,
                "p2p": w.p2p,
                "sessions": w.sessions,
                "payloads": w.payloads,
                "watch_ms": w.watch_ms,
                "p2p_share": _share(w.cdn, w.p2p),
            }
            for w in found.windows
        ],
    )

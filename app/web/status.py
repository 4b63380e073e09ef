"""GET /stats/status: where the pipeline stands, for the dashboard and scripts.

The open window (its end, how much of it has passed), the settings a reader
needs to interpret rows (window length, flush grace and interval), and the
flush: closed windows still waiting in Redis, how late the oldest one is
(the flush lag), and the scheduler's last success. A few Redis commands,
whatever the traffic: ``S`` shards give one round trip of ``2S`` commands and
one ``HGETALL``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import marshmallow as ma
from flask import current_app, jsonify
from redis.exceptions import RedisError

from ..buffer.snapshots import buffered_windows
from ..flush.figures import read_figures
from ..windows import window_end, window_index
from .auth import require_bearer
from .docs import Blueprint, error_responses
from .errors import Unavailable

logger = logging.getLogger(__name__)

bp = Blueprint("status", __name__, description="Where the pipeline stands")


def _iso(t: float) -> str:
    moment = datetime.fromtimestamp(t, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _OpenWindow(ma.Schema):
    start = ma.fields.String(metadata={"description": "ISO 8601, UTC"})
    end = ma.fields.String(metadata={"description": "ISO 8601, UTC: the time of its rows"})
    elapsed_seconds = ma.fields.Float()


class _Flush(ma.Schema):
    pending_windows = ma.fields.Integer(
        metadata={"description": "Closed windows still in Redis, not yet in PostgreSQL"}
    )
    oldest_pending = ma.fields.String(
        allow_none=True, metadata={"description": "End of the oldest of them, or null"}
    )
    lag_seconds = ma.fields.Float(
        metadata={
            "description": "Seconds since the end of the oldest closed window still in "
            "Redis (0: none); normally under grace + interval"
        }
    )
    last_success = ma.fields.String(
        allow_none=True, metadata={"description": "Last successful scheduled flush, or null"}
    )
    seconds_since_last_success = ma.fields.Float(allow_none=True)
    last_duration_seconds = ma.fields.Float(allow_none=True)
    runs = ma.fields.Integer(metadata={"description": "Scheduled flushes that succeeded"})
    failures = ma.fields.Integer(metadata={"description": "Scheduled flushes that failed"})
    rows = ma.fields.Integer(metadata={"description": "Rows written by scheduled flushes"})


class StatusSchema(ma.Schema):
    now = ma.fields.String(metadata={"description": "The service's clock, ISO 8601, UTC"})
    window_seconds = ma.fields.Integer(metadata={"description": "STATS_WINDOW_SECONDS"})
    flush_grace_seconds = ma.fields.Float()
    flush_interval_seconds = ma.fields.Float()
    open_window = ma.fields.Nested(_OpenWindow)
    flush = ma.fields.Nested(_Flush)


@bp.before_request
def authenticate() -> None:
    require_bearer(current_app.extensions["payload_stats"].config.api_token)


@bp.get("/stats/status")
@bp.response(200, StatusSchema, description="The open window and the flush")
@bp.doc(security=[{"bearer": []}], responses=error_responses(401, 503))
def get_status():
    """The open window, the settings, and the flush: pending windows and lag."""
    services = current_app.extensions["payload_stats"]
    config = services.config
    now = services.clock()
    try:
        figures = read_figures(services.redis, config)
        pending = buffered_windows(services.redis, config)
    except RedisError as exc:
        logger.warning("redis_unavailable", extra={"reason": str(exc)})
        raise Unavailable("The stats buffer is unavailable; retry shortly.") from None
    length = config.window_seconds
    k = window_index(now, length)
    closed = sorted(w for w in pending if window_end(w, length) <= now)
    last = figures.get("last_success") or None
    return jsonify(
        now=_iso(now),
        window_seconds=length,
        flush_grace_seconds=config.flush_grace_seconds,
        flush_interval_seconds=config.flush_interval_seconds,
        open_window={
            "start": _iso(k * length),
            "end": _iso(window_end(k, length)),
            "elapsed_seconds": round(now - k * length, 3),
        },
        flush={
            "pending_windows": len(closed),
            "oldest_pending": _iso(window_end(closed[0], length)) if closed else None,
            "lag_seconds": round(max(0.0, now - window_end(closed[0], length)), 3)
            if closed
            else 0.0,
            "last_success": _iso(last) if last else None,
            "seconds_since_last_success": round(max(0.0, now - last), 3) if last else None,
            "last_duration_seconds": figures.get("last_duration") if last else None,
            "runs": int(figures.get("runs", 0)),
            "failures": int(figures.get("failures", 0)),
            "rows": int(figures.get("rows", 0)),
        },
    )

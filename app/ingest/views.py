"""POST /stats and POST /stats/batch: device payloads into the Redis window buffer."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from flask import Request, Response, current_app, request
from redis.exceptions import RedisError

from ..buffer.cluster_ingest import PartlyWritten
from ..buffer.ingest import Entry, Recorded
from ..buffer.memory import is_out_of_memory
from ..logs import one_line
from ..web.auth import require_bearer
from ..web.docs import Blueprint, accepted_response, error_responses, payload_ref
from ..web.errors import (
    BufferFull,
    InvalidBatch,
    InvalidBatchItems,
    InvalidPayload,
    PartiallyWritten,
    Unavailable,
)
from ..windows import window_end, window_index
from .body import (
    JSON_TYPES,
    NDJSON_TYPES,
    check_content_type,
    parse_json,
    parse_ndjson,
    read_body,
)
from .schema import MAX_BATCH, load_payloads

logger = logging.getLogger(__name__)

bp = Blueprint("ingest", __name__, description="Device payloads in")


def _services_and_request() -> tuple[Any, Request]:
    # Each context-local lookup costs; the hot path does each once.
    return current_app.extensions["payload_stats"], request._get_current_object()


def _record(services: Any, payloads: list[dict[str, Any]]) -> Recorded:
    now = services.clock()
    try:
        recorded = services.ingest.record(Entry(payloads, now))
    except PartlyWritten as exc:  # Redis Cluster: some shards of a batch failed
        _count(services, exc.recorded)
        logger.warning(
            "redis_partly_written",
            extra={"reason": one_line(exc.cause), "written": len(exc.written)},
        )
        raise PartiallyWritten(
            exc.written,
            len(payloads),
            exc.recorded.accepted,
            exc.recorded.duplicates,
            retry_after=_full_for(services, now) if is_out_of_memory(exc.cause) else 1,
        ) from None
    except RedisError as exc:
        if is_out_of_memory(exc):
            logger.warning("redis_full", extra={"reason": one_line(exc)})
            raise BufferFull(
                "The stats buffer is full; nothing was written. Retry after the time given.",
                retry_after=_full_for(services, now),
            ) from None
        logger.warning("redis_unavailable", extra={"reason": one_line(exc)})
        raise Unavailable("The stats buffer is unavailable; retry shortly.") from None
    _count(services, recorded)
    return recorded


def _full_for(services: Any, now: float) -> int:
    """Seconds until a full Redis has room again: the flush moves a closed window out."""
    config = services.config
    wait = window_end(window_index(now, config.window_seconds), config.window_seconds)
    return max(1, math.ceil(wait + config.flush_grace_seconds - now))


def _count(services: Any, recorded: Recorded) -> None:
    services.metrics.accepted.inc(recorded.accepted)
    if recorded.duplicates:
        services.metrics.duplicates.inc(recorded.duplicates)
    if recorded.unprotected:
        services.metrics.unprotected.inc(recorded.unprotected)


@bp.post("/stats")
@bp.doc(
    summary="Record one device payload",
    description="A payload with the customer, content, token and sessionDuration of one "
    "accepted within STATS_DEDUP_SECONDS is a retry: answered, not counted. "
    "Accepts Content-Encoding: gzip.",
    requestBody={"required": True, "content": {"application/json": {"schema": payload_ref()}}},
    responses={**accepted_response(), **error_responses(400, 401, 413, 415, 503)},
)
def post_stats():
    """One payload. 200 {"accepted": 1, "duplicates": 0}; a retry is a duplicate."""
    services, req = _services_and_request()
    require_bearer(services.config.ingest_token)
    check_content_type(req, JSON_TYPES)
    body = parse_json(read_body(req, services.config.max_body_bytes))
    payloads, errors = load_payloads(services.schema, [body])
    if errors:
        raise InvalidPayload(errors["0"])
    return _answer(_record(services, payloads))


@bp.post("/stats/batch")
@bp.doc(
    summary="Record 1..1000 payloads, all or nothing",
    requestBody={
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": payload_ref(),
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                }
            },
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "one payload per line"}
            },
        },
    },
    responses={**accepted_response(), **error_responses(400, 401, 413, 415, 503)},
)
def post_batch():
    """1..1000 payloads as a JSON array or NDJSON; all are written, or none."""
    services, req = _services_and_request()
    require_bearer(services.config.ingest_token)
    check_content_type(req, JSON_TYPES + NDJSON_TYPES)
    data = read_body(req, services.config.max_body_bytes)
    if req.mimetype in NDJSON_TYPES:
        items = parse_ndjson(data, MAX_BATCH)
    else:
        items = parse_json(data)
        if not isinstance(items, list):
            raise InvalidBatch("A batch is a JSON array of payloads (or NDJSON).")
    if not 1 <= len(items) <= MAX_BATCH:
        raise InvalidBatch(f"A batch holds 1 to {MAX_BATCH} payloads, not {len(items)}.")
    payloads, errors = load_payloads(services.schema, items)
    if errors:
        raise InvalidBatchItems(errors, len(items))
    return _answer(_record(services, payloads))


def _answer(recorded: Recorded) -> Response:
    # orjson, not jsonify: this answer is sent once per device payload.
    body = orjson.dumps({"accepted": recorded.accepted, "duplicates": recorded.duplicates})
    return Response(body, mimetype="application/json")

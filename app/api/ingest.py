"""POST /stats: one device payload into the Redis window buffer."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from marshmallow import ValidationError
from redis.exceptions import RedisError

from .. import buffer
from ..errors import InvalidPayload, Unavailable
from .body import read_json

logger = logging.getLogger(__name__)

bp = Blueprint("ingest", __name__)


@bp.post("/stats")
def post_stats():
    services = current_app.extensions["payload_stats"]
    body = read_json(request)
    if not isinstance(body, dict):
        raise InvalidPayload({"_schema": ["Expected a JSON object."]})
    try:
        payload = services.schema.load(body)
    except ValidationError as exc:
        raise InvalidPayload(exc.normalized_messages()) from None
    try:
        buffer.record(services.redis, services.scripts, services.config, [payload], services.clock())
    except RedisError as exc:
        logger.warning("redis_unavailable", extra={"reason": str(exc)})
        raise Unavailable("The stats buffer is unavailable; retry shortly.") from None
    return jsonify(accepted=1)

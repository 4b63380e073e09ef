"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST

from .. import metrics
from ..auth import require_bearer

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def get_metrics():
    services = current_app.extensions["payload_stats"]
    require_bearer(services.config.api_token)
    body = metrics.exposition(services.metrics, services.redis, services.config, services.clock)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)

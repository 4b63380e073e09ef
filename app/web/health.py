"""GET /healthz (the process answers) and GET /readyz (what it needs is there)."""

from __future__ import annotations

import psycopg2
from flask import current_app, jsonify
from redis.exceptions import RedisError

from ..buffer.memory import SAFE_POLICY, memory_state
from ..logs import one_line
from ..postgres.pool import connection
from .auth import holds_bearer
from .docs import Blueprint, error_responses

bp = Blueprint("health", __name__, description="Health checks")


@bp.get("/healthz")
@bp.doc(responses={200: {"description": "Alive"}})
def healthz():
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
@bp.doc(responses={200: {"description": "Ready"}, 503: error_responses(503)[503]})
def readyz():
    """Ready when Redis and PostgreSQL answer, Redis cannot evict buffered keys and
    has room; a 503 names each failing check. Details (errors, ratios) only for
    a caller holding the API token."""
    services = current_app.extensions["payload_stats"]
    config = services.config
    checks: dict[str, str] = {}
    details: dict[str, str] = {}
    try:
        state = memory_state(services.redis)
    except RedisError as exc:
        checks["redis"] = "down"
        details["redis"] = one_line(exc)
    else:
        checks["redis"] = "ok"
        checks["redis_eviction"] = "ok" if state.policy == SAFE_POLICY else "unsafe"
        details["redis_eviction"] = f"maxmemory-policy {state.policy}"
        ratio = state.used_ratio
        full = ratio is not None and ratio >= config.redis_memory_ready_ratio
        checks["redis_memory"] = "full" if full else "ok"
        details["redis_memory"] = (
            "no maxmemory limit" if ratio is None else f"{ratio:.1%} of maxmemory used"
        )
    if services.pool is not None:
        try:
            with connection(services.pool) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                conn.rollback()
            checks["postgres"] = "ok"
        except psycopg2.Error as exc:
            checks["postgres"] = "down"
            details["postgres"] = one_line(exc)
    failing = [name for name, state in checks.items() if state != "ok"]
    body: dict[str, object] = {"checks": checks}
    if config.api_token is not None and holds_bearer(config.api_token):
        body["details"] = details
    if failing:
        response = jsonify(error="not_ready", message=f"Not ready: {', '.join(failing)}.", **body)
        response.status_code = 503
        return response
    return jsonify(status="ready", **body)

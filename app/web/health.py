"""GET /healthz (the process answers) and GET /readyz (its servers answer)."""

from __future__ import annotations

import psycopg2
from flask import current_app, jsonify
from redis.exceptions import RedisError

from ..postgres.pool import connection
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
    """Redis and PostgreSQL answer; a 503 names what is down in ``checks``."""
    services = current_app.extensions["payload_stats"]
    checks = {}
    try:
        services.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"down: {exc}"
    if services.pool is not None:
        try:
            with connection(services.pool) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                conn.rollback()
            checks["postgres"] = "ok"
        except psycopg2.Error as exc:
            checks["postgres"] = "down: " + " ".join(str(exc).split())
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        response = jsonify(error="not_ready", message=f"Down: {', '.join(down)}.", checks=checks)
        response.status_code = 503
        return response
    return jsonify(status="ready", checks=checks)

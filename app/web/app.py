"""The application factory: ``create_app()``, served by gunicorn as
``payload_stats.web.app:create_app()``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import Flask
from psycopg2.pool import ThreadedConnectionPool
from redis import Redis

from .. import logs
from ..buffer.connection import redis_client
from ..buffer.ingest import record_entries
from ..buffer.scripts import Scripts
from ..config import Config
from ..ingest import views as ingest_views
from ..ingest.group_commit import GroupCommit
from ..ingest.schema import PayloadSchema
from ..postgres.pool import web_pool
from ..query import views as query_views
from . import dashboard, docs, errors, health, metrics, status
from .metrics import Metrics


@dataclass
class Services:
    """What views need, built once per process by ``create_app``."""

    config: Config
    redis: Redis
    scripts: Scripts
    schema: PayloadSchema
    clock: Callable[[], float]
    metrics: Metrics
    pool: ThreadedConnectionPool | None  # None: DATABASE_URL unset (ingest only)
    ingest: GroupCommit  # this process's shared INGEST calls
    # GET /stats and /stats/live running at once in this process, at most; the
    # other threads stay free for ingest (payload_stats.query.views).
    read_slots: threading.BoundedSemaphore


def create_app(config: Config | None = None, *, clock: Callable[[], float] | None = None) -> Flask:
    """The WSGI application: config, then clients, then blueprints, then error handlers.

    Clients connect lazily, so this never touches the network. Raises
    ConfigError when the configuration is invalid.
    """
    config = config or Config.from_env()
    logs.configure(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    redis = redis_client(config)
    scripts = Scripts(redis)
    services = Services(
        config=config,
        redis=redis,
        scripts=scripts,
        schema=PayloadSchema(),
        clock=clock or time.time,
        metrics=Metrics(),
        # One connection per gunicorn thread at most: a request never waits for one.
        # Every statement has a statement and a lock timeout (STATS_PG_*_TIMEOUT_MS).
        pool=web_pool(config, config.web_threads) if config.database_url else None,
        ingest=GroupCommit(partial(record_entries, redis, scripts, config)),
        read_slots=threading.BoundedSemaphore(config.read_slots),
    )
    app.extensions["payload_stats"] = services
    api = docs.init_app(app, [ingest_views.bp, query_views.bp, status.bp, health.bp, metrics.bp])
    dashboard.init_app(app, api.spec)
    errors.init_app(app)  # after flask-smorest's own handlers, to replace them
    _instrument(app, services.metrics)
    return app


INGEST_ENDPOINTS = frozenset(("ingest.post_stats", "ingest.post_batch"))


def _instrument(app: Flask, m: Metrics) -> None:
    """Time every request and count rejected ingest requests, around the WSGI app
    rather than in Flask hooks: on the ingest path every microsecond is paid
    once per device payload."""
    inner = app.wsgi_app

    def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        seen: list[Any] = ["500", None]  # status, matched rule

        def record_status(code: str, headers: Any, *exc_info: Any) -> Any:
            # Called while the request is still bound (Flask unbinds it after).
            req = environ.get("werkzeug.request")
            seen[0], seen[1] = code[:3], req.url_rule if req is not None else None
            return start_response(code, headers, *exc_info)

        try:
            return inner(environ, record_status)
        finally:
            status, rule = seen
            # The route pattern, not the path: unknown paths must not create series.
            m.observe_request(
                rule.rule if rule is not None else "unmatched",
                environ["REQUEST_METHOD"],
                status,
                time.perf_counter() - started,
            )
            if status >= "400" and rule is not None and rule.endpoint in INGEST_ENDPOINTS:
                m.rejected.labels(environ.get("payload_stats.error", status)).inc()

    app.wsgi_app = timed  # type: ignore[method-assign]

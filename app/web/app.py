"""The application factory: ``create_app()``, served by gunicorn as
``payload_stats.web.app:create_app()``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, g, request
from psycopg2.pool import ThreadedConnectionPool
from redis import Redis

from .. import logs
from ..buffer.connection import redis_client
from ..buffer.scripts import Scripts
from ..config import Config
from ..ingest import views as ingest_views
from ..ingest.schema import PayloadSchema
from ..postgres.pool import web_pool
from ..query import views as query_views
from . import docs, errors, health, metrics
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
    services = Services(
        config=config,
        redis=redis,
        scripts=Scripts(redis),
        schema=PayloadSchema(),
        clock=clock or time.time,
        metrics=Metrics(),
        # One connection per gunicorn thread at most: a request never waits for one.
        # Every statement has a statement and a lock timeout (STATS_PG_*_TIMEOUT_MS).
        pool=web_pool(config, config.web_threads) if config.database_url else None,
        read_slots=threading.BoundedSemaphore(config.read_slots),
    )
    app.extensions["payload_stats"] = services
    docs.init_app(app, [ingest_views.bp, query_views.bp, health.bp, metrics.bp])
    errors.init_app(app)  # after flask-smorest's own handlers, to replace them
    _instrument(app, services.metrics)
    return app


def _instrument(app: Flask, m: Metrics) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def observe(response: Response) -> Response:
        started = g.get("started")
        if started is not None:
            # The route pattern, not the path: unknown paths must not create series.
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            m.observe_request(
                endpoint, request.method, str(response.status_code), time.perf_counter() - started
            )
        if response.status_code >= 400 and request.endpoint in ingest_views.ENDPOINTS:
            m.rejected.labels(g.get("error_code", str(response.status_code))).inc()
        return response

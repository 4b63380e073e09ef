"""The application factory: ``create_app()``, served by gunicorn as
``payload_stats.web.app:create_app()``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from flask import Flask, Response, g, request
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
from ..postgres.pool import database_pool
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
    ingest: GroupCommit  # this process's shared INGEST calls


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
        pool=database_pool(config, config.web_threads) if config.database_url else None,
        ingest=GroupCommit(partial(record_entries, redis, scripts, config)),
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

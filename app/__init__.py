"""payload-stats: video-player telemetry into billing-grade traffic statistics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, g, request
from psycopg2.pool import ThreadedConnectionPool
from redis import Redis

from . import clients, errors, logs
from .api import docs, health, ingest, query
from .api import metrics as metrics_api  # not `metrics`: that is app.metrics
from .buffer import Scripts
from .config import Config
from .metrics import Metrics
from .schemas import PayloadSchema


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
    redis = clients.redis_client(config)
    services = Services(
        config=config,
        redis=redis,
        scripts=Scripts(redis),
        schema=PayloadSchema(),
        clock=clock or time.time,
        metrics=Metrics(),
        # One connection per gunicorn thread at most: a request never waits for one.
        pool=clients.database_pool(config, config.web_threads) if config.database_url else None,
    )
    app.extensions["payload_stats"] = services
    for blueprint in (ingest.bp, query.bp, health.bp, metrics_api.bp, docs.bp):
        app.register_blueprint(blueprint)
    errors.init_app(app)
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
            m.observe_request(endpoint, request.method, str(response.status_code),
                              time.perf_counter() - started)
        if response.status_code >= 400 and request.endpoint in ingest.ENDPOINTS:
            m.rejected.labels(g.get("error_code", str(response.status_code))).inc()
        return response

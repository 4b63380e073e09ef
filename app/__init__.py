"""payload-stats: video-player telemetry into billing-grade traffic statistics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask
from redis import Redis

from . import clients, errors, logs
from .api import health, ingest
from .buffer import Scripts
from .config import Config
from .schemas import PayloadSchema


@dataclass
class Services:
    """What views need, built once per process by ``create_app``."""

    config: Config
    redis: Redis
    scripts: Scripts
    schema: PayloadSchema
    clock: Callable[[], float]


def create_app(config: Config | None = None, *, clock: Callable[[], float] | None = None) -> Flask:
    """The WSGI application: config, then clients, then blueprints, then error handlers.

    Raises ConfigError when the configuration is invalid.
    """
    config = config or Config.from_env()
    logs.configure(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    redis = clients.redis_client(config)
    app.extensions["payload_stats"] = Services(
        config=config,
        redis=redis,
        scripts=Scripts(redis),
        schema=PayloadSchema(),
        clock=clock or time.time,
    )
    app.register_blueprint(ingest.bp)
    app.register_blueprint(health.bp)
    errors.init_app(app)
    return app

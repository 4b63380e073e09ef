"""Peer ``direct``: the minimal form of the project's design, without validation.

Per payload, one redis-py pipeline (MULTI/EXEC, redis-py's default):
``HINCRBY cdn``, ``HINCRBY p2p`` on the hash of its window, customer and
content, and ``SADD token`` into that window's token set. No validation, no
session rule, no retry detection, no index of keys to flush.

Environment: ``REDIS_URL``, ``STATS_KEY_PREFIX`` (keys go under
``PREFIX:direct:``), ``STATS_WINDOW_SECONDS``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask, request
from redis import Redis


def key_prefix(prefix: str) -> str:
    return f"{prefix}:direct"


def add(pipe: Any, prefix: str, window: int, payload: Mapping[str, Any]) -> None:
    """Queue the three commands of one payload on ``pipe``."""
    base = f"{key_prefix(prefix)}:{window}:{payload['customer']}:{payload['content']}"
    pipe.hincrby(base, "cdn", payload["cdn"])
    pipe.hincrby(base, "p2p", payload["p2p"])
    pipe.sadd(f"{base}:tokens", payload["token"])


def record(
    redis: Redis,
    prefix: str,
    window_seconds: int,
    payloads: Iterable[Mapping[str, Any]],
    now: float,
) -> None:
    """Write ``payloads`` in one pipeline (the harness fills memory with it)."""
    window = int(now // window_seconds)
    pipe = redis.pipeline()
    for payload in payloads:
        add(pipe, prefix, window, payload)
    pipe.execute()


def create_app() -> Flask:
    """A Flask app whose ``POST /stats`` makes one pipeline round trip."""
    app = Flask(__name__)
    redis = Redis.from_url(os.environ["REDIS_URL"])  # connects lazily, after fork
    prefix = os.environ.get("STATS_KEY_PREFIX", "ps")
    window_seconds = int(os.environ.get("STATS_WINDOW_SECONDS", "300"))

    @app.post("/stats")
    def post_stats():
        record(redis, prefix, window_seconds, [request.get_json()], time.time())
        return "", 204

    return app

"""Prometheus metrics and GET /metrics.

Request metrics live in each web process and are summed across gunicorn
workers by prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by ``payload-stats web`` before any worker starts). Flush metrics come
from the scheduler, which may run on another host: it keeps them in Redis
(``payload_stats.flush.figures``), and every web process reads them at scrape
time, together with what is still waiting in the buffer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from flask import Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from redis import Redis
from redis.exceptions import RedisError

from ..buffer.memory import SAFE_POLICY, MemoryState, memory_state
from ..buffer.snapshots import buffered_windows
from ..config import Config
from ..flush.figures import read_figures
from ..windows import window_end
from .auth import require_bearer
from .docs import Blueprint, error_responses

bp = Blueprint("metrics", __name__, description="Prometheus metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The request metrics of one application."""

    def __init__(self) -> None:
        # prometheus_client chooses multiprocess mode when it is first imported;
        # gunicorn may import it (through this package) before its config sets
        # PROMETHEUS_MULTIPROC_DIR, so choose again now, in the worker.
        values.ValueClass = values.get_value_class()
        # A registry of our own: several apps in one process (tests) must not
        # collide in the global one. Multiprocess values go to files anyway.
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "payload_stats_payloads_accepted_total",
            "Payloads counted.",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "payload_stats_payloads_duplicate_total",
            "Retried payloads answered without counting them again.",
            registry=self.registry,
        )
        self.unprotected = Counter(
            "payload_stats_payloads_unprotected_total",
            "Payloads counted past their session's retry-memory bound (docs/retries.md).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "payload_stats_payloads_rejected_total",
            "Requests rejected, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "payload_stats_request_duration_seconds",
            "Request latency.",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._latency_children: dict[tuple[str, str, str], Histogram] = {}

    def observe_request(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        # labels() validates and locks on every call; the few label sets
        # there are (route patterns x methods x statuses) are kept here.
        key = (endpoint, method, status)
        child = self._latency_children.get(key)
        if child is None:
            child = self._latency_children[key] = self.latency.labels(*key)
        child.observe(seconds)


def exposition(metrics: Metrics, redis: Redis, config: Config, clock: Callable[[], float]) -> bytes:
    """The text exposition: this host's request metrics plus the flush metrics."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry = metrics.registry
    text = generate_latest(registry)
    extra = CollectorRegistry()
    extra.register(FlushCollector(redis, config, clock))
    return text + generate_latest(extra)


class FlushCollector:
    """Flush metrics read from Redis at scrape time."""

    def __init__(self, redis: Redis, config: Config, clock: Callable[[], float]) -> None:
        self.redis = redis
        self.config = config
        self.clock = clock

    def collect(self) -> Iterator:
        try:
            figures = read_figures(self.redis, self.config)
            pending = buffered_windows(self.redis, self.config)
            memory = memory_state(self.redis)
        except RedisError:
            up = GaugeMetricFamily("payload_stats_redis_up", "Redis answered the scrape.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("payload_stats_redis_up", "Redis answered the scrape.")
        up.add_metric([], 1)
        yield up

        yield from _memory_families(memory)
        quarantined = GaugeMetricFamily(
            "payload_stats_quarantined_rows",
            "Rows the flush isolated, waiting for an operator (payload-stats quarantine).",
        )
        quarantined.add_metric([], figures.get("quarantined", 0.0))
        yield quarantined
        for name, field, text in (
            ("payload_stats_flush_runs", "runs", "Flush runs that succeeded."),
            ("payload_stats_flush_failures", "failures", "Flush runs that failed."),
            ("payload_stats_flush_rows", "rows", "Rows written into PostgreSQL by flushes."),
            (
                "payload_stats_flush_watch_ms",
                "watch_ms",
                "Watch time written into PostgreSQL by flushes, in ms "
                "(rate / 1000: average concurrent viewers).",
            ),
        ):
            family = CounterMetricFamily(name, text)
            family.add_metric([], figures.get(field, 0.0))
            yield family
        duration = GaugeMetricFamily(
            "payload_stats_flush_duration_seconds", "Duration of the last successful flush."
        )
        duration.add_metric([], figures.get("last_duration", 0.0))
        yield duration
        last = GaugeMetricFamily(
            "payload_stats_flush_last_success_timestamp_seconds",
            "Unix time of the last successful flush (0: none yet).",
        )
        last.add_metric([], figures.get("last_success", 0.0))
        yield last

        now = self.clock()
        length = self.config.window_seconds
        closed = [k for k in pending if window_end(k, length) <= now]
        windows = GaugeMetricFamily(
            "payload_stats_windows_pending", "Closed windows still in Redis, not yet in PostgreSQL."
        )
        windows.add_metric([], len(closed))
        yield windows
        age = GaugeMetricFamily(
            "payload_stats_oldest_unflushed_window_age_seconds",
            "Seconds since the end of the oldest closed window still in Redis (0: none).",
        )
        age.add_metric([], max(0.0, now - window_end(min(closed), length)) if closed else 0.0)
        yield age


@bp.get("/metrics")
@bp.doc(
    security=[{"bearer": []}],
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(401),
    },
)
def get_metrics():
    """Prometheus metrics, summed over the web workers."""
    services = current_app.extensions["payload_stats"]
    require_bearer(services.config.api_token)
    body = exposition(services.metrics, services.redis, services.config, services.clock)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def _memory_families(state: MemoryState) -> Iterator:
    used = GaugeMetricFamily("payload_stats_redis_memory_used_bytes", "Redis used_memory.")
    used.add_metric([], state.used_bytes)
    yield used
    limit = GaugeMetricFamily(
        "payload_stats_redis_memory_max_bytes", "Redis maxmemory (0: no limit)."
    )
    limit.add_metric([], state.max_bytes)
    yield limit
    if state.used_ratio is not None:
        ratio = GaugeMetricFamily(
            "payload_stats_redis_memory_used_ratio",
            "used / maxmemory: ingest answers 503 buffer_full at 1 (docs/deployment.md).",
        )
        ratio.add_metric([], state.used_ratio)
        yield ratio
    safe = GaugeMetricFamily(
        "payload_stats_redis_eviction_safe", "1 when maxmemory-policy is noeviction."
    )
    safe.add_metric([], 1.0 if state.policy == SAFE_POLICY else 0.0)
    yield safe

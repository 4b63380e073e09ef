"""Driving the service in process: ingest checked by the model, and crashing flushes."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from redis import Redis

from payload_stats.buffer import ingest
from payload_stats.buffer.ingest import Recorded
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config
from tests.conftest import payload
from tests.support.model import Model


class Feeder:
    """Writes payloads into Redis the way ingest does (``buffer.ingest.record``, at a
    given reception time) and into the reference model, which must agree with
    every answer."""

    def __init__(self, redis: Redis, config: Config) -> None:
        self.redis = redis
        self.config = config
        self.scripts = Scripts(redis)
        self.model = Model.of(config)
        self._tokens = itertools.count()

    def token(self) -> str:
        """A token never used before in this test."""
        return f"tok-{next(self._tokens)}"

    def make(
        self,
        customer: str = "acme",
        content: str = "movie-1",
        cdn: int = 250,
        p2p: int = 100,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A payload; of a fresh token unless one is given."""
        overrides.setdefault("token", self.token())
        return payload(customer=customer, content=content, cdn=cdn, p2p=p2p, **overrides)

    def send(self, payloads: Iterable[Mapping[str, Any]], now: float) -> Recorded:
        payloads = list(payloads)
        expected = self.model.receive_all(now, payloads)
        recorded = ingest.record(self.redis, self.scripts, self.config, payloads, now)
        assert (recorded.accepted, recorded.duplicates, recorded.sessions) == (
            expected.accepted,
            expected.duplicates,
            expected.sessions,
        ), "ingest answered otherwise than the rules (tests/support/model.py)"
        return recorded


class Crash(Exception):
    """A simulated crash of the flusher at a failpoint."""


def crash_at(name: str, occurrence: int = 1) -> Callable[[str], None]:
    """A failpoint raising Crash the ``occurrence``-th time ``name`` is reached:
    Redis and PostgreSQL are left as ``failpoints.exit_at`` would leave them."""
    reached: Counter[str] = Counter()

    def failpoint(point: str) -> None:
        reached[point] += 1
        if point == name and reached[point] == occurrence:
            raise Crash(point)

    return failpoint


def flush_time(end: float, config: Config) -> float:
    """The first instant a window ending at ``end`` may be flushed."""
    return end + config.flush_grace_seconds

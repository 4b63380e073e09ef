"""Random realistic device payloads: many tokens, 10 customers x 100 contents.

Each token is one video session bound to one customer and content; every
payload it sends carries a ``sessionDuration`` 30 s longer than the last, so
no payload is a retry. ``benchmarks/wrk/post.lua`` draws the same way.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

CUSTOMERS = 10
CONTENTS = 100
PERIOD_MS = 30_000


def customer_name(i: int) -> str:
    return f"customer-{i:02d}"


def content_name(i: int) -> str:
    return f"live/channel-{i:03d}"


class PayloadStream:
    """An endless, seeded stream of valid payloads over ``tokens`` sessions."""

    def __init__(self, seed: int | None = None, tokens: int = 50_000) -> None:
        self.rng = random.Random(seed)
        self.tokens = tokens
        self.run = uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]
        # token index -> [token, customer, content, next sessionDuration]
        self.sessions: dict[int, list[Any]] = {}

    def _session(self, i: int) -> list[Any]:
        session = self.sessions.get(i)
        if session is None:
            rng = self.rng
            session = [
                f"{self.run}-{i:08x}-{rng.getrandbits(32):08x}",
                customer_name(rng.randrange(CUSTOMERS)),
                content_name(rng.randrange(CONTENTS)),
                PERIOD_MS * rng.randrange(0, 20),
            ]
            self.sessions[i] = session
        return session

    def next(self) -> dict[str, Any]:
        """The next payload of a random session."""
        rng = self.rng
        session = self._session(rng.randrange(self.tokens))
        token, customer, content, duration = session
        session[3] = duration + PERIOD_MS
        if rng.random() < 0.05:  # a stalled player: no bytes at all
            cdn = p2p = 0
        else:
            cdn, p2p = rng.randrange(0, 4_000_000), rng.randrange(0, 8_000_000)
        return {
            "token": token,
            "customer": customer,
            "content": content,
            "timespan": PERIOD_MS + rng.randrange(-500, 500),
            "p2p": p2p,
            "cdn": cdn,
            "sessionDuration": duration,
        }

    def body(self, batch: int = 0) -> bytes:
        """One request body: a payload, or a JSON array of ``batch`` payloads."""
        if batch:
            return json.dumps([self.next() for _ in range(batch)]).encode()
        return json.dumps(self.next()).encode()

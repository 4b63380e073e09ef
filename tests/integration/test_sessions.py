"""The session rule (SPEC section 4), end to end: HTTP ingest, real Redis, flush, PostgreSQL.

Payloads go through ``POST /stats`` at instants set on the fake clock; closed
windows are flushed with ``flush_once(redis, pool, config, clock)``; the
``stats`` rows are then compared exactly. Every payload of a token carries a
distinct ``sessionDuration``, as a real device's does, so no payload here can
be mistaken for a retry of an earlier one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from payload_stats.buffer import keys as k_
from payload_stats.flush.flusher import flush_once
from payload_stats.windows import window_index
from tests.conftest import payload, shard_counts, stats_rows

# --- helpers -----------------------------------------------------------------------


class Timeline:
    """Drives one test: posts payloads at fake-clock instants and flushes windows."""

    def __init__(self, client, redis, pool, config, clock) -> None:
        self.client, self.redis, self.pool, self.config, self.clock = (
            client,
            redis,
            pool,
            config,
            clock,
        )
        self.length = config.window_seconds
        self.k = window_index(clock(), self.length)  # the first window of the test
        self.flushed = -1  # the last window flushed, relative to k

    def start(self, j: int) -> int:
        """Start of window ``k + j`` (unix seconds)."""
        return (self.k + j) * self.length

    def end(self, j: int) -> int:
        """End of window ``k + j``: the window's time in ``stats``."""
        return (self.k + j + 1) * self.length

    def send(self, t: float, **fields: Any) -> None:
        assert t >= self.clock.now, "the timeline only moves forward"
        self.clock.now = t
        resp = self.client.post("/stats", json=payload(**fields))
        assert resp.status_code == 200, resp.get_data()
        body = resp.get_json()
        assert body["accepted"] == 1, body
        assert body.get("duplicates", 0) == 0, body

    def flush(self, j: int) -> None:
        """Flush at the first instant window ``k + j`` may be flushed."""
        t = self.end(j) + self.config.flush_grace_seconds
        assert t >= self.clock.now
        self.clock.now = t
        flush_once(self.redis, self.pool, self.config, self.clock)
        self.flushed = j

    def flush_before(self, t: float) -> None:
        """Flush every window that may be flushed before ``t``, each as early as it may."""
        while self.end(self.flushed + 1) + self.config.flush_grace_seconds <= t:
            self.flush(self.flushed + 1)

    def rows(self) -> dict[tuple, tuple[int, int, int]]:
        return stats_rows(self.pool)


@pytest.fixture
def timeline(client, redis, pool, config, clock) -> Timeline:
    return Timeline(client, redis, pool, config, clock)


class SessionRule:
    """SPEC sections 2-4 as a reference model, for timelines in which no token
    is silent for 2L (so no token may be forgotten)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.seen: set[str] = set()
        self.started: set[str] = set()
        self.rows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])

    def add(self, t: float, body: dict[str, Any]) -> None:
        end = (window_index(t, self.length) + 1) * self.length
        row = self.rows[(end, body["customer"], body["content"])]
        row[0] += body["cdn"]
        row[1] += body["p2p"]
        token = body["token"]
        short = body["sessionDuration"] < self.length * 1000
        fresh = token not in self.seen or body["cdn"] + body["p2p"] == 0
        if short and fresh and token not in self.started:
            self.started.add(token)
            row[2] += 1
        self.seen.add(token)

    def expected(self) -> dict[tuple, tuple[int, int, int]]:
        return {key: tuple(values) for key, values in self.rows.items()}  # type: ignore[misc]


# --- sessions across windows --------------------------------------------------------


@pytest.mark.parametrize("before_end", [1.0, 0.001], ids=["last-second", "last-millisecond"])
@pytest.mark.parametrize("flush_between", [False, True], ids=["flush-at-end", "flush-each"])
def test_session_started_at_end_of_window_is_counted_once(timeline, before_end, flush_between):
    tl = timeline
    tl.clock.now = tl.start(0)
    tl.send(tl.end(0) - before_end, token="T", cdn=100, p2p=0, sessionDuration=0)
    if flush_between:
        tl.flush(0)
    # Window k+1: bytes (a known token) and a zero-byte payload (already started).
    tl.send(tl.end(0) + 29, token="T", cdn=200, p2p=0, sessionDuration=29_000)
    tl.send(tl.end(0) + 59, token="T", cdn=0, p2p=0, sessionDuration=59_000)
    if flush_between:
        tl.flush(1)
    # Window k+2: a zero-byte keep-alive with a short duration, then bytes.
    tl.send(tl.end(1) + 10, token="T", cdn=0, p2p=0, sessionDuration=1_000)
    tl.send(tl.end(1) + 20, token="T", cdn=5, p2p=7, sessionDuration=2_000)
    tl.flush(2)

    assert tl.rows() == {
        (tl.end(0), "acme", "movie-1"): (100, 0, 1),
        (tl.end(1), "acme", "movie-1"): (200, 0, 0),
        (tl.end(2), "acme", "movie-1"): (5, 7, 0),
    }


def test_zero_byte_keepalives_window_after_window_are_one_session(timeline):
    tl = timeline
    # Every 30 s for four windows; sessionDuration stays short (a player that
    # resets it), the bytes stay zero: one session, in the first window.
    for i in range(40):
        t = tl.start(0) + 1 + 30 * i
        tl.flush_before(t)
        tl.send(t, token="K", cdn=0, p2p=0, sessionDuration=1_000 + i)
    tl.flush(3)

    assert tl.rows() == {
        (tl.end(0), "acme", "movie-1"): (0, 0, 1),
        (tl.end(1), "acme", "movie-1"): (0, 0, 0),
        (tl.end(2), "acme", "movie-1"): (0, 0, 0),
        (tl.end(3), "acme", "movie-1"): (0, 0, 0),
    }


def test_session_duration_decides_for_a_new_token(timeline):
    tl = timeline
    long_ms = tl.length * 1000
    t = tl.start(0) + 10
    tl.send(t, token="exactly-L", content="exactly-L", sessionDuration=long_ms)
    tl.send(t, token="max", content="max", sessionDuration=2**53 - 1)
    tl.send(t, token="just-short", content="just-short", sessionDuration=long_ms - 1)
    tl.send(t, token="zero", content="zero", sessionDuration=0)
    # New with a long duration, then bytes with a short one: seen, never started.
    tl.send(t, token="long-then-bytes", content="long-then-bytes", sessionDuration=long_ms + 5)
    tl.send(t + 30, token="long-then-bytes", content="long-then-bytes", sessionDuration=1_000)
    tl.flush(0)

    assert tl.rows() == {
        (tl.end(0), "acme", "exactly-L"): (250, 100, 0),
        (tl.end(0), "acme", "max"): (250, 100, 0),
        (tl.end(0), "acme", "just-short"): (250, 100, 1),
        (tl.end(0), "acme", "zero"): (250, 100, 1),
        (tl.end(0), "acme", "long-then-bytes"): (500, 200, 0),
    }


def test_seen_token_starts_a_session_with_zero_bytes_and_short_duration(timeline):
    tl = timeline
    long_ms = tl.length * 1000
    # Seen (long duration, bytes): no session; zero bytes but long: still none.
    tl.send(
        tl.start(0) + 10,
        token="S",
        customer="A",
        content="X",
        cdn=10,
        p2p=0,
        sessionDuration=long_ms + 5_000,
    )
    # The same story inside one window, for another token.
    tl.send(
        tl.start(0) + 20,
        token="S2",
        customer="A",
        content="Z",
        cdn=3,
        p2p=4,
        sessionDuration=long_ms,
    )
    tl.send(
        tl.start(0) + 40,
        token="S",
        customer="A",
        content="X",
        cdn=0,
        p2p=0,
        sessionDuration=long_ms + 35_000,
    )
    tl.send(
        tl.start(0) + 50,
        token="S2",
        customer="A",
        content="Z",
        cdn=0,
        p2p=0,
        sessionDuration=long_ms - 1,
    )
    # Next window, under another customer/content: zero bytes, short: starts one.
    tl.send(
        tl.start(1) + 5, token="S", customer="B", content="Y", cdn=0, p2p=0, sessionDuration=1_000
    )
    tl.send(
        tl.start(1) + 35, token="S", customer="B", content="Y", cdn=0, p2p=0, sessionDuration=2_000
    )
    tl.send(
        tl.start(2) + 5, token="S", customer="A", content="X", cdn=0, p2p=0, sessionDuration=3_000
    )
    tl.flush(2)

    assert tl.rows() == {
        (tl.end(0), "A", "X"): (10, 0, 0),
        (tl.end(0), "A", "Z"): (3, 4, 1),
        (tl.end(1), "B", "Y"): (0, 0, 1),
        (tl.end(2), "A", "X"): (0, 0, 0),
    }


def test_session_is_counted_under_the_payload_that_started_it(timeline):
    tl = timeline
    tl.send(tl.start(0) + 1, token="M", customer="A", content="X", cdn=1, p2p=0, sessionDuration=0)
    tl.send(
        tl.start(0) + 31, token="M", customer="B", content="Y", cdn=2, p2p=0, sessionDuration=30_000
    )
    tl.send(
        tl.start(1) + 1, token="M", customer="A", content="X", cdn=3, p2p=0, sessionDuration=60_000
    )
    tl.send(
        tl.start(1) + 2, token="M", customer="C", content="W", cdn=0, p2p=0, sessionDuration=61_000
    )
    tl.flush(1)

    assert tl.rows() == {
        (tl.end(0), "A", "X"): (1, 0, 1),
        (tl.end(0), "B", "Y"): (2, 0, 0),
        (tl.end(1), "A", "X"): (3, 0, 0),
        (tl.end(1), "C", "W"): (0, 0, 0),
    }


def test_many_tokens_in_every_shard(timeline, config):
    tl = timeline
    long_ms = tl.length * 1000
    tokens = [f"device-{i:03d}" for i in range(120)]
    assert {k_.shard_of(t, config.shards) for t in tokens} == set(range(config.shards))
    rule = SessionRule(tl.length)

    def send(t: float, **fields: Any) -> None:
        tl.send(t, **fields)
        rule.add(t, payload(**fields))

    for i, token in enumerate(tokens):  # window k
        kind = i % 3
        send(
            tl.start(0) + 1 + i,
            token=token,
            customer=f"c{i % 2}",
            cdn=0 if kind == 2 else 1_000 + i,
            p2p=i,
            sessionDuration=long_ms + i if kind == 1 else i,
        )
    tl.flush(0)
    for i, token in enumerate(tokens):  # window k+1: zero bytes, short duration
        send(
            tl.start(1) + 10 + i,
            token=token,
            customer=f"c{i % 2}",
            cdn=0,
            p2p=0,
            sessionDuration=100_000 + i,
        )
    tl.flush(1)

    # Each token started exactly one session: kinds 0 and 2 in window k, kind 1 in k+1.
    assert tl.rows() == rule.expected()
    assert sum(s for _, _, s in tl.rows().values()) == 120
    assert tl.rows()[(tl.end(1), "c1", "movie-1")][2] == 20  # kind 1, odd i


NAMES = [
    ("a:b", "c"),
    ("a", "b:c"),
    ("1:x", "y"),
    ("1", "x:y"),
    ("3:a:b", "c"),
    ("3", "a:b:c"),
    ("a:", ":b"),
    (":", ":"),
    ("📺 Ch🎬", "🎞️"),
    ("👨\u200d👩\u200d👧", "family"),
    ("日本語チャンネル", "番組"),
    ("한국어", "콘텐츠"),
    ("قناة الجزيرة", "ערוץ"),
    ("\u202eevil", "rtl-override"),
    ("e\u0301", "nfd"),
    ("é", "nfd"),  # NFD and NFC: two different strings
    (" padded ", "x"),
    ("padded", "x"),
    ('quote " comma ,', "csv"),
    ("\\.", "\\N"),
    ("NULL", "%_"),
    ("a\\b", "'"),
    ("📺" * 256, "c" * 256),
]


def test_unicode_and_separator_colliding_names_stay_apart(timeline):
    tl = timeline
    long_ms = tl.length * 1000
    t = tl.start(0) + 1
    for i, (customer, content) in enumerate(NAMES):
        # Two devices per pair: one starts a session, one (long duration) does not.
        tl.send(
            t,
            token=f"u{i}-a",
            customer=customer,
            content=content,
            cdn=1_000 * (i + 1) + 1,
            p2p=i + 1,
            sessionDuration=i,
        )
        tl.send(
            t,
            token=f"u{i}-b",
            customer=customer,
            content=content,
            cdn=1_000 * (i + 1) + 2,
            p2p=2 * (i + 1),
            sessionDuration=long_ms + i,
        )
    # One pair again in the next window.
    tl.send(
        tl.start(1) + 1,
        token="u0-a",
        customer="a:b",
        content="c",
        cdn=9,
        p2p=9,
        sessionDuration=30_000,
    )
    tl.flush(1)

    expected = {
        (tl.end(0), customer, content): (2_000 * (i + 1) + 3, 3 * (i + 1), 1)
        for i, (customer, content) in enumerate(NAMES)
    }
    expected[(tl.end(1), "a:b", "c")] = (9, 9, 0)
    assert len(expected) == len(NAMES) + 1, "the test's names must be distinct"
    assert tl.rows() == expected


@shard_counts
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_timelines_follow_the_session_rule(timeline, seed):
    """Twenty devices over four windows: resets, zero bytes, switches, flushes between."""
    tl = timeline
    rng = random.Random(seed)
    long_ms = tl.length * 1000
    pairs = [("acme", "movie-1"), ("acme", "movie-2"), ("a:b", "c"), ("a", "b:c"), ("日本", "📺")]
    events = []
    for n in range(20):
        token = f"dev-{seed}-{n}"
        used: set[int] = set()
        t = tl.start(0) + rng.randint(0, 5 * tl.length) / 2  # 0 .. 2.5 L, half seconds
        base = rng.choice([0, rng.randint(0, long_ms - 1), long_ms + rng.randint(0, 10**6)])
        pair = rng.choice(pairs)
        i = 0
        while t < tl.end(3):
            if rng.random() < 0.15:  # the player restarts its clock (same token)
                base = rng.choice([rng.randint(0, long_ms - 1), long_ms + rng.randint(0, 10**6)])
                i = 0
            if rng.random() < 0.1:
                pair = rng.choice(pairs)
            duration = base + 30_000 * i
            while duration in used:  # distinct durations: never a retry
                duration += 1
            used.add(duration)
            zero = rng.random() < 0.35
            fields = {
                "token": token,
                "customer": pair[0],
                "content": pair[1],
                "cdn": 0 if zero else rng.randint(0, 10**6),
                "p2p": 0 if zero else rng.choice([0, rng.randint(0, 10**6)]),
                "sessionDuration": duration,
            }
            events.append((t, len(events), fields))
            t += rng.randint(2, 180) / 2  # 1 .. 90 s: never silent for 2L
            i += 1
    events.sort(key=lambda e: (e[0], e[1]))

    rule = SessionRule(tl.length)
    for t, _, fields in events:
        tl.flush_before(t)
        tl.send(t, **fields)
        rule.add(t, payload(**fields))
    tl.flush(3)

    expected = rule.expected()
    assert sum(s for _, _, s in expected.values()) > 0, "the seed exercises no session"
    assert tl.rows() == expected

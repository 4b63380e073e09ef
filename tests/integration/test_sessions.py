"""Sessions end to end (docs/sessions.md): HTTP ingest, real Redis, flush, PostgreSQL.

Payloads go through ``POST /stats`` at instants set on the fake clock; closed
windows are flushed with ``flush_once(redis, pool, config, clock)``; every
answer and every ``stats`` row is compared with the reference model
(``tests/support/model.py``). Each rule is pinned by a buffer test
(``test_buffer.py``); here the rules meet the flush: windows flushed between
a session's payloads, names that stress the COPY into PostgreSQL, sessions
of one content spread over shards, and random timelines.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from payload_stats.buffer import keys as k_
from payload_stats.flush.flusher import flush_once
from payload_stats.windows import window_index
from tests.conftest import payload, shard_counts
from tests.support.model import Model, Row
from tests.support.store import stats_table


class Timeline:
    """Posts payloads at fake-clock instants and flushes windows; checks every
    answer against the model."""

    def __init__(self, client, redis, pool, config, clock) -> None:
        self.client, self.redis, self.pool, self.config, self.clock = (
            client,
            redis,
            pool,
            config,
            clock,
        )
        self.model = Model.of(config)
        self.length = config.window_seconds
        self.k = window_index(clock(), self.length)  # the first window of the test
        self.flushed = -1  # the last window flushed, relative to k

    def start(self, j: int) -> int:
        """Start of window ``k + j`` (unix seconds)."""
        return (self.k + j) * self.length

    def end(self, j: int) -> int:
        """End of window ``k + j``: the window's time in ``stats``."""
        return (self.k + j + 1) * self.length

    def send(self, t: float, **fields: Any) -> dict[str, int]:
        assert t >= self.clock.now, "the timeline only moves forward"
        self.clock.now = t
        body = payload(**fields)
        resp = self.client.post("/stats", json=body)
        assert resp.status_code == 200, resp.get_data()
        assert resp.get_json() == self.model.receive_all(t, [body]).body(), body
        return resp.get_json()

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

    def rows(self) -> dict[tuple, Row]:
        return stats_table(self.pool)


@pytest.fixture
def timeline(client, redis, pool, config, clock) -> Timeline:
    return Timeline(client, redis, pool, config, clock)


def test_the_session_rule_end_to_end(timeline):
    tl = timeline
    long_ms = tl.length * 1000
    t = tl.start(0) + 10
    # A new token starts a session when its duration is shorter than the window.
    tl.send(t, token="exactly-L", content="exactly-L", sessionDuration=long_ms)
    tl.send(t, token="max", content="max", sessionDuration=2**53 - 1)
    tl.send(t, token="just-short", content="just-short", sessionDuration=long_ms - 1)
    tl.send(t, token="zero", content="zero", sessionDuration=0)
    # Seen (long duration), then bytes with a short one: never started.
    tl.send(t, token="S", customer="A", content="X", cdn=10, p2p=0, sessionDuration=long_ms + 5)
    tl.send(t + 30, token="S", customer="A", content="X", cdn=3, p2p=4, sessionDuration=1_000)
    # Seen, never started: zero bytes and a short duration start it, in the
    # next window.
    tl.send(tl.start(1) + 5, token="S", customer="A", content="X", cdn=0, p2p=0, sessionDuration=2)
    # Started: never again, zero bytes or not.
    tl.send(tl.start(1) + 35, token="S", customer="A", content="X", cdn=0, p2p=0, sessionDuration=3)
    # The same token under another customer and content is another session.
    tl.send(tl.start(2) + 5, token="S", customer="B", content="Y", cdn=0, p2p=0, sessionDuration=4)
    tl.flush(2)

    assert tl.rows() == tl.model.rows()
    assert tl.model.rows() == {
        (tl.end(0), "acme", "exactly-L"): Row(250, 100, 0, 1, 30_000),
        (tl.end(0), "acme", "max"): Row(250, 100, 0, 1, 30_000),
        (tl.end(0), "acme", "just-short"): Row(250, 100, 1, 1, 30_000),
        (tl.end(0), "acme", "zero"): Row(250, 100, 1, 1, 30_000),
        (tl.end(0), "A", "X"): Row(13, 4, 0, 2, 60_000),
        (tl.end(1), "A", "X"): Row(0, 0, 1, 2, 60_000),
        (tl.end(2), "B", "Y"): Row(0, 0, 1, 1, 30_000),
    }


@pytest.mark.parametrize("flush_between", [False, True], ids=["flush-at-end", "flush-each"])
def test_a_session_is_counted_once_across_windows_and_flushes(timeline, flush_between):
    tl = timeline
    # Started in the last millisecond of window k...
    tl.send(tl.end(0) - 0.001, token="T", cdn=100, p2p=0, sessionDuration=0)
    for j in range(1, 4):
        if flush_between:
            tl.flush_before(tl.start(j) + 5)
        # ...then zero-byte keep-alives with short durations and bytes, window after window.
        for i in range(10):
            zero = i % 2 == 0
            tl.send(
                tl.start(j) + 5 + 29 * i,
                token="T",
                cdn=0 if zero else j,
                p2p=0 if zero else i,
                sessionDuration=1_000 * j + i,
            )
    tl.flush(3)

    assert tl.rows() == tl.model.rows()
    assert [row.sessions for _, row in sorted(tl.rows().items())] == [1, 0, 0, 0]


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
        for token, duration in ((f"u{i}-a", i), (f"u{i}-b", long_ms + i)):
            tl.send(
                t,
                token=token,
                customer=customer,
                content=content,
                cdn=1_000 * (i + 1) + len(token),
                p2p=i + 1,
                sessionDuration=duration,
            )
    tl.send(tl.start(1) + 1, token="u0-a", customer="a:b", content="c", sessionDuration=30_000)
    tl.flush(1)

    assert len({(customer, content) for customer, content in NAMES}) == len(NAMES)
    assert tl.rows() == tl.model.rows()
    assert len(tl.rows()) == len(NAMES) + 1
    assert all(row.sessions == 1 for (end, _, _), row in tl.rows().items() if end == tl.end(0))


def test_sessions_of_one_content_on_every_shard_add_up(timeline, config):
    tl = timeline
    long_ms = tl.length * 1000
    tokens = [f"device-{i:03d}" for i in range(120)]
    assert {k_.shard_of(t, config.shards) for t in tokens} == set(range(config.shards))
    for i, token in enumerate(tokens):  # window k: new tokens, a third of them long
        kind = i % 3
        tl.send(
            tl.start(0) + 1 + i,
            token=token,
            customer=f"c{i % 2}",
            cdn=0 if kind == 2 else 1_000 + i,
            p2p=i,
            sessionDuration=long_ms + i if kind == 1 else i,
        )
    tl.flush(0)
    for i, token in enumerate(tokens):  # window k+1: zero bytes, short duration
        tl.send(
            tl.start(1) + 10 + i,
            token=token,
            customer=f"c{i % 2}",
            cdn=0,
            p2p=0,
            sessionDuration=100_000 + i,
        )
    tl.flush(1)

    # Each token started exactly one session: kinds 0 and 2 in window k, kind 1 in k+1.
    assert tl.rows() == tl.model.rows()
    assert sum(row.sessions for row in tl.rows().values()) == 120


@shard_counts
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_timelines_follow_the_rules(timeline, seed):
    """Twenty devices over four windows: clock resets, zero bytes, customer and
    content switches, retries, flushes in between; no device silent for 2L."""
    tl = timeline
    rng = random.Random(seed)
    long_ms = tl.length * 1000
    pairs = [("acme", "movie-1"), ("acme", "movie-2"), ("a:b", "c"), ("a", "b:c"), ("日本", "📺")]
    events = []
    for n in range(20):
        token = f"dev-{seed}-{n}"
        t = tl.start(0) + rng.randint(0, 5 * tl.length) / 2  # 0 .. 2.5 L, half seconds
        base = rng.choice([0, rng.randint(0, long_ms - 1), long_ms + rng.randint(0, 10**6)])
        pair = rng.choice(pairs)
        i = 0
        sent: list[dict[str, Any]] = []
        while t < tl.end(3):
            if sent and rng.random() < 0.08:  # a retry of a recent payload
                fields = rng.choice(sent[-3:])
            else:
                if rng.random() < 0.15:  # the player restarts its clock (same token)
                    base = rng.choice(
                        [rng.randint(0, long_ms - 1), long_ms + rng.randint(0, 10**6)]
                    )
                    i = 0
                if rng.random() < 0.1:
                    pair = rng.choice(pairs)
                zero = rng.random() < 0.35
                fields = {
                    "token": token,
                    "customer": pair[0],
                    "content": pair[1],
                    "cdn": 0 if zero else rng.randint(0, 10**6),
                    "p2p": 0 if zero else rng.choice([0, rng.randint(0, 10**6)]),
                    "sessionDuration": base + 30_000 * i,
                }
                sent.append(fields)
            events.append((t, len(events), fields))
            t += rng.randint(2, 180) / 2  # 1 .. 90 s: never silent for 2L
            i += 1
    events.sort(key=lambda e: (e[0], e[1]))

    duplicates = 0
    for t, _, fields in events:
        tl.flush_before(t)
        duplicates += tl.send(t, **fields)["duplicates"]
    tl.flush(3)

    assert tl.rows() == tl.model.rows()
    assert sum(row.sessions for row in tl.rows().values()) > 0, "the seed starts no session"
    assert duplicates > 0, "the seed sends no retry"

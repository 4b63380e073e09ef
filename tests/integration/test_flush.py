"""The exactly-once flush (docs/exactly-once.md), in process, against real servers.

Payloads are written with a ``Feeder`` (``buffer.ingest.record`` at chosen
reception times), which feeds the reference model too; ``stats`` is compared
with the model's rows exactly (cdn, p2p, sessions, payloads): no tolerance,
no "at least". Time is a ``FakeClock``; crashes are failpoint callables that
raise ``Crash`` where ``exit_at`` would kill the process, which leaves Redis
and PostgreSQL in the same state.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from psycopg2.pool import ThreadedConnectionPool
from redis import Redis
from redis.exceptions import RedisError

from payload_stats.buffer import snapshots
from payload_stats.buffer.connection import redis_client
from payload_stats.buffer.keys import Keys, encode_ident, shard_of
from payload_stats.buffer.snapshots import Snapshot
from payload_stats.config import Config
from payload_stats.flush.flusher import FlushReport, flush_once
from payload_stats.flush.lock import flush_with_lock
from payload_stats.postgres.migrations import migrate, migrations
from payload_stats.postgres.pool import connection, create_pool, database_pool
from tests.conftest import START, FakeClock, payload, shard_counts, with_search_path
from tests.support.drive import Crash, Feeder, crash_at, flush_time
from tests.support.model import Model, Row
from tests.support.store import assert_drained, ledger_ids, stats_table

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/test"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/9"
K0 = math.floor(START / 300)  # the window of START, with the fixtures' 300 s windows


def end_of(k: int, config: Config) -> int:
    return (k + 1) * config.window_seconds


def report_totals(report: FlushReport) -> dict[int, dict[str, int]]:
    """{window end: rows and sums written} of one flush."""
    return {
        int(w.end.timestamp()): {
            "rows": w.written.rows,
            "cdn": w.written.cdn,
            "p2p": w.written.p2p,
            "sessions": w.written.sessions,
            "payloads": w.written.payloads,
            "watch_ms": w.written.watch_ms,
        }
        for w in report.windows
    }


def populate(feeder: Feeder, windows: int = 3, pairs: int = 20) -> list[int]:
    """``pairs`` (customer, content) pairs in each of ``windows`` windows from K0.

    Returns the window ends. Enough pairs to cross ``flush_batch_size`` (7).
    """
    rng = random.Random(windows * 1000 + pairs)
    for w in range(windows):
        now = (K0 + w) * 300 + 1
        batch = []
        for i in range(pairs):
            for j in range(1 + i % 3):
                batch.append(
                    feeder.make(
                        customer=f"cust-{i % 4}",
                        content=f"content-{i}",
                        cdn=rng.randrange(0, 10**9),
                        p2p=0 if j == 2 else rng.randrange(0, 10**9),
                        sessionDuration=rng.choice([0, 1200, 299_999, 300_000, 4_000_000]),
                    )
                )
        feeder.send(batch, now)
    return [end_of(K0 + w, feeder.config) for w in range(windows)]


# --- windows: when and where rows are written ---------------------------------------------------


def test_nothing_before_end_plus_grace_everything_at_it(client, redis, pool, config, clock):
    model = Model.of(config)
    end = end_of(K0, config)
    sent = [
        payload(token="a", cdn=1000, p2p=10),
        payload(token="a", cdn=500, p2p=0, sessionDuration=31_200),  # no second start
        payload(token="b", customer="acme", content="movie-2", cdn=0, p2p=7),
        payload(token="c", customer="other", cdn=3, p2p=4, sessionDuration=300_000),
    ]
    for p in sent:
        answer = client.post("/stats", json=p).get_json()
        assert answer == model.receive_all(clock.now, [p]).body()
    # The next window opens; its payloads must stay in Redis for now.
    clock.now = end + 1
    later = payload(token="d", cdn=9, p2p=9)
    assert (
        client.post("/stats", json=later).get_json() == model.receive_all(clock.now, [later]).body()
    )

    clock.now = flush_time(end, config) - 0.001
    report = flush_once(redis, pool, config, clock)
    assert report.windows == []
    assert stats_table(pool) == {}

    clock.now = flush_time(end, config)
    report = flush_once(redis, pool, config, clock)
    assert [w.end for w in report.windows] == [datetime.fromtimestamp(end, tz=timezone.utc)]
    assert report_totals(report) == {end: model.window_totals(end)}
    assert (
        stats_table(pool)
        == model.rows(until_end=end)
        == {
            (end, "acme", "movie-1"): Row(1500, 10, 1, 2, 60_000),
            (end, "acme", "movie-2"): Row(0, 7, 1, 1, 30_000),
            (end, "other", "movie-1"): Row(3, 4, 0, 1, 30_000),
        }
    )

    # Nothing more until the next window's end + grace.
    assert flush_once(redis, pool, config, clock).windows == []
    clock.now = flush_time(end + 300, config)
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == model.rows()
    assert model.rows()[(end + 300, "acme", "movie-1")] == Row(9, 9, 1, 1, 30_000)
    assert_drained(redis, config)


def test_several_windows_each_row_at_its_window_end(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    first = K0 * 300
    # Boundaries: a window is [k*L, (k+1)*L), so k*L belongs to window k.
    moments = [
        first,
        first + 299.999,
        first + 300,
        first + 600 - 0.001,
        first + 600,
        first + 1000,
        first + 1499.5,
    ]
    for i, now in enumerate(moments):
        feeder.send([feeder.make(cdn=10**i, p2p=i), feeder.make(content="shared", cdn=1)], now)
    assert feeder.model.ends() == [end_of(K0 + w, config) for w in range(5)]

    clock.now = flush_time(end_of(K0 + 4, config), config)
    report = flush_once(redis, pool, config, clock)
    ends = feeder.model.ends()
    assert [int(w.end.timestamp()) for w in report.windows] == ends
    assert report_totals(report) == {e: feeder.model.window_totals(e) for e in ends}
    assert stats_table(pool) == feeder.model.rows()
    assert stats_table(pool)[(end_of(K0, config), "acme", "movie-1")] == Row(
        10**0 + 10**1, 1, 2, 2, 60_000
    )
    assert_drained(redis, config)


NAMES = [
    ("a:b", "c"),
    ("a", "b:c"),
    ("1:a", "b"),
    ("1", "a:b"),
    ("comma,customer", 'quote"content'),
    ("back\\slash", "\\."),
    ("\\N", "NULL"),
    (" ", "  spaced  "),
    ("ÉCOLE", "日本語/ライブ"),
    ("emoji🎬", "🎬" * 256),
    ("x" * 256, "y"),
    ("tab\tless", "semi;colon"),
    ("percent%s", "brace{0}"),
]


def test_many_pairs_cross_the_batch_size(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    pairs = [*NAMES, *((f"customer-{i % 5}", f"content/{i}") for i in range(60))]
    pairs = [(c, n) for c, n in pairs if "\t" not in c]  # tabs are control characters
    assert len(pairs) > 5 * config.flush_batch_size
    now = START
    for i, (customer, content) in enumerate(pairs):
        feeder.send([feeder.make(customer, content, cdn=i, p2p=2 * i + 1)], now)
        feeder.send([feeder.make(customer, content, cdn=10**12, p2p=0)], now + 7)

    clock.now = flush_time(end_of(K0, config), config)
    report = flush_once(redis, pool, config, clock)
    rows = stats_table(pool)
    assert rows == feeder.model.rows()
    assert len(rows) == len(pairs)
    assert {(c, n) for _, c, n in rows} == set(pairs)
    assert report.rows == len(pairs)
    assert_drained(redis, config)


def test_sums_beyond_double_precision_are_exact(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    for _ in range(20):  # 10_000 payloads of ~1 TB: sums past 2**53
        feeder.send(
            [feeder.make(cdn=10**12, p2p=10**12 - 1, sessionDuration=300_000) for _ in range(500)],
            START,
        )
    clock.now = flush_time(end_of(K0, config), config)
    flush_once(redis, pool, config, clock)
    expected = {
        (end_of(K0, config), "acme", "movie-1"): Row(
            10**16, 10**16 - 10_000, 0, 10_000, 300_000_000
        )
    }
    assert feeder.model.rows() == expected
    assert stats_table(pool) == expected


def test_popular_content_from_all_shards_is_one_row(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    tokens = [f"viewer-{i}" for i in range(200)]
    assert {shard_of(t, config.shards) for t in tokens} == set(range(config.shards))
    for i, token in enumerate(tokens):
        feeder.send(
            [feeder.make("broadcaster", "final", cdn=1000 + i, p2p=i, token=token)], START + i
        )
        # Keeps playing: 30 s later, same session, more bytes.
        feeder.send(
            [
                feeder.make(
                    "broadcaster", "final", cdn=7, p2p=3, token=token, sessionDuration=31_200
                )
            ],
            START + i + 30,
        )

    clock.now = flush_time(end_of(K0, config), config)
    report = flush_once(redis, pool, config, clock)
    end = end_of(K0, config)
    expected = {
        (end, "broadcaster", "final"): Row(
            sum(1000 + i for i in range(200)) + 7 * 200,
            sum(range(200)) + 3 * 200,
            200,
            400,
            400 * 30_000,
        )
    }
    assert feeder.model.rows() == expected
    assert stats_table(pool) == expected
    assert report.windows[0].snapshots == config.shards
    assert report_totals(report) == {end: {**feeder.model.window_totals(end), "rows": 1}}
    assert_drained(redis, config)


# --- crashes, outages, stragglers, replays ------------------------------------------------------


@shard_counts
@pytest.mark.parametrize(
    ("point", "occurrence"),
    [
        ("after_freeze", 1),
        ("mid_batch", 1),
        ("mid_batch", 5),
        ("after_commit", 1),
        ("after_commit", 2),
    ],
)
def test_crash_at_a_failpoint_then_flush(redis, pool, config, clock, point, occurrence):
    feeder = Feeder(redis, config)
    ends = populate(feeder)
    clock.now = flush_time(ends[-1], config)

    with pytest.raises(Crash):
        flush_once(redis, pool, config, clock, failpoint=crash_at(point, occurrence))

    # Whatever was committed is exactly whole windows; the rest is still in Redis.
    after_crash = stats_table(pool)
    prefixes = {e: feeder.model.rows(until_end=e) for e in [0, *ends]}
    done = [e for e, rows in prefixes.items() if rows == after_crash]
    assert done, "the crash left a partly written window in PostgreSQL"
    if point == "after_freeze":
        assert done == [0]
    pending = snapshots.pending_snapshots(redis, config)
    assert pending, "the crash left no snapshot to re-drive"
    if point == "after_commit":  # committed, still in Redis: in the ledger
        assert done == [ends[occurrence - 1]]
        committed = {s.id for s in pending if end_of(s.k, config) <= done[0]}
        assert committed and committed <= set(ledger_ids(pool))

    report = flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    # The next run re-drives the crashed window (a no-op after a commit) and the rest.
    redriven = [e for e in ends if e > done[0] or (point == "after_commit" and e == done[0])]
    assert sorted(int(w.end.timestamp()) for w in report.windows) == redriven
    assert report.rows == sum(feeder.model.window_totals(e)["rows"] for e in ends if e > done[0])
    assert_drained(redis, config)
    assert flush_once(redis, pool, config, clock).windows == []
    assert stats_table(pool) == feeder.model.rows()


def test_repeated_crashes_with_stragglers_in_between(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=2)
    clock.now = flush_time(ends[-1], config)
    for i, point in enumerate(["after_freeze", "mid_batch", "after_freeze", "after_commit"]):
        with pytest.raises(Crash):
            flush_once(redis, pool, config, clock, failpoint=crash_at(point))
        # Late payloads for both flushed windows, and for the open one.
        feeder.send([feeder.make("late", f"c{i}", cdn=i + 1, p2p=1)], K0 * 300 + 299)
        feeder.send([feeder.make(f"cust-{i}", f"content-{i}", cdn=5)], (K0 + 1) * 300 + 10)
        feeder.send([feeder.make("open", "now", cdn=1, p2p=1)], clock.now)

    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows(until_end=ends[-1])
    clock.now = flush_time(feeder.model.ends()[-1], config)
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


@shard_counts
def test_crash_while_releasing_snapshots(redis, pool, config, clock, monkeypatch):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=2)
    clock.now = flush_time(ends[-1], config)
    real_release = snapshots.release
    released = []

    def release_then_crash(redis_: Redis, config_: Config, snapshot: Snapshot, *how) -> None:
        if released:  # the second release dies half-way: some counters already gone
            keys = Keys(config_.key_prefix)
            first_batch = next(snapshots.read_snapshot(redis_, config_, snapshot))
            redis_.unlink(
                *(
                    keys.snapshot_counters(
                        snapshot.shard,
                        snapshot.flush_id,
                        snapshot.k,
                        encode_ident(r.customer, r.content),
                    )
                    for r in first_batch
                )
            )
            raise Crash("release")
        released.append(snapshot)
        real_release(redis_, config_, snapshot, *how)

    monkeypatch.setattr(snapshots, "release", release_then_crash)
    with pytest.raises(Crash):
        flush_once(redis, pool, config, clock)
    monkeypatch.setattr(snapshots, "release", real_release)
    # One shard: window 2 was committed before its release died; more: window 1 only.
    assert stats_table(pool) == feeder.model.rows(until_end=ends[0] if config.shards > 1 else None)

    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def test_postgres_unreachable_keeps_everything_in_redis(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=2)
    clock.now = flush_time(ends[-1], config)
    before = sorted({k.decode() for k in redis.scan_iter(match=f"{config.key_prefix}:*")})

    down = database_pool(replace(config, database_url=UNREACHABLE_DATABASE_URL))
    try:
        for _ in range(2):
            with pytest.raises(psycopg2.OperationalError):
                flush_once(redis, down, config, clock)
    finally:
        down.closeall()

    # Nothing was even frozen: the live keys are exactly as they were.
    assert snapshots.pending_snapshots(redis, config) == []
    assert sorted({k.decode() for k in redis.scan_iter(match=f"{config.key_prefix}:*")}) == before
    assert stats_table(pool) == {}

    report = flush_once(redis, pool, config, clock)
    assert report_totals(report) == {e: feeder.model.window_totals(e) for e in ends}
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def test_redis_unreachable_changes_nothing(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    populate(feeder, windows=1)
    clock.now = flush_time(end_of(K0, config), config)
    down = redis_client(replace(config, redis_url=UNREACHABLE_REDIS_URL))
    try:
        with pytest.raises(RedisError):
            flush_once(down, pool, config, clock)
    finally:
        down.close()
    assert stats_table(pool) == {}
    assert ledger_ids(pool) == []
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


class RecordingPool(ThreadedConnectionPool):
    """A pool that remembers the last connection it handed out."""

    last: Any = None

    def getconn(self, key=None):
        self.last = super().getconn(key)
        return self.last


def _terminate(database_url: str, pid: int) -> None:
    """Kill one PostgreSQL backend, as a server restart would, and wait until it is gone."""
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(100):
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone()[0] == 0:
                    return
                time.sleep(0.05)
        raise AssertionError(f"backend {pid} did not terminate")
    finally:
        admin.close()


def test_postgres_connection_lost_mid_transaction(redis, pool, config, clock, database_url):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=2)
    clock.now = flush_time(ends[-1], config)
    flaky = RecordingPool(0, 2, config.database_url, connect_timeout=5)
    killed = []

    def kill_backend(point: str) -> None:
        if point == "mid_batch" and not killed:
            killed.append(flaky.last.get_backend_pid())
            _terminate(database_url, killed[0])

    try:
        with pytest.raises(psycopg2.Error):
            flush_once(redis, flaky, config, clock, failpoint=kill_backend)
        assert killed
        assert stats_table(pool) == {}
        assert ledger_ids(pool) == []
        # The broken connection was dropped, not handed out again.
        flush_once(redis, flaky, config, clock)
    finally:
        flaky.closeall()
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def test_stragglers_are_added_into_the_same_row(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    end = end_of(K0, config)
    feeder.send([feeder.make(cdn=100, p2p=10), feeder.make("b", "x", cdn=1, p2p=1)], START)
    clock.now = flush_time(end, config)
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()

    # Received in window K0 (reception time), reaching Redis after its flush.
    late_token = feeder.token()
    feeder.send(
        [
            feeder.make(cdn=5, p2p=6, token=late_token),
            # Zero bytes, short duration, but the token already started its session.
            feeder.make(cdn=0, p2p=0, token=late_token, sessionDuration=31_200),
            feeder.make("new", "pair", cdn=3, p2p=0, sessionDuration=300_000),
        ],
        end - 1,
    )
    report = flush_once(redis, pool, config, clock)
    assert report_totals(report) == {
        end: {"rows": 2, "cdn": 8, "p2p": 6, "sessions": 1, "payloads": 3, "watch_ms": 90_000}
    }
    assert (
        stats_table(pool)
        == feeder.model.rows()
        == {
            (end, "acme", "movie-1"): Row(105, 16, 2, 3, 90_000),
            (end, "b", "x"): Row(1, 1, 1, 1, 30_000),
            (end, "new", "pair"): Row(3, 0, 0, 1, 30_000),
        }
    )
    assert_drained(redis, config)


def test_straggler_arriving_during_a_flush_waits_for_the_next_one(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=1)
    clock.now = flush_time(ends[0], config)
    late = []

    def straggle(point: str) -> None:
        if point in ("after_freeze", "mid_batch", "after_commit"):
            p = feeder.make("late", point, cdn=len(late) + 1, p2p=1)
            late.append(p)
            feeder.send([p], K0 * 300 + 250)

    before = feeder.model.rows()
    flush_once(redis, pool, config, clock, failpoint=straggle)
    assert late
    assert stats_table(pool) == before
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def _snapshot_dump(redis: Redis, config: Config) -> dict[bytes, tuple[bytes, int]]:
    """DUMP of every snapshot key (the pending index and the frozen data)."""
    found = {}
    for name in redis.scan_iter(match=f"{config.key_prefix}:*", count=1000):
        if b":x:" in name or name.endswith(b":snaps"):
            found[name] = redis.dump(name)
    return found


def test_replayed_snapshot_is_not_counted_twice(redis, pool, config, clock):
    """A snapshot that comes back after its commit (lost release) is a no-op."""
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=1)
    clock.now = flush_time(ends[0], config)
    dumped = {}

    def keep_copy(point: str) -> None:
        if point == "after_commit":
            dumped.update(_snapshot_dump(redis, config))

    flush_once(redis, pool, config, clock, failpoint=keep_copy)
    assert dumped
    assert stats_table(pool) == feeder.model.rows()
    committed = ledger_ids(pool)
    assert committed

    for name, value in dumped.items():
        redis.restore(name, 0, value, replace=True)
    assert len(snapshots.pending_snapshots(redis, config)) == len(committed)

    report = flush_once(redis, pool, config, clock)
    assert report_totals(report) == {
        ends[0]: {"rows": 0, "cdn": 0, "p2p": 0, "sessions": 0, "payloads": 0, "watch_ms": 0}
    }
    assert stats_table(pool) == feeder.model.rows()
    assert ledger_ids(pool) == committed
    assert_drained(redis, config)


# --- concurrent flushers and the lock -----------------------------------------------------------


@shard_counts
def test_racing_flushers_while_payloads_keep_coming(redis, pool, config, clock):
    flushers = 3
    feeder = Feeder(redis, config)
    length = config.window_seconds
    errors: list[BaseException] = []
    reports: list[FlushReport] = []
    stop = threading.Event()
    recording_done = threading.Event()

    def flusher() -> None:
        r = redis_client(config)
        p = database_pool(config, 2)
        try:
            while not stop.is_set():
                reports.append(flush_once(r, p, config, clock))
        except Exception as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            r.close()
            p.closeall()

    def recorder() -> None:
        rng = random.Random(flushers)
        try:
            deadline = time.monotonic() + 2.0
            i = 0
            while time.monotonic() < deadline:
                now = clock.now
                current = feeder.make(
                    f"c{i % 3}",
                    f"m{i % 5}",
                    cdn=rng.randrange(10**6),
                    p2p=rng.choice([0, rng.randrange(10**6)]),
                    sessionDuration=rng.choice([1200, 400_000]),
                )
                previous = feeder.make(
                    f"c{i % 2}", f"m{i % 4}", cdn=rng.randrange(10**6), p2p=rng.randrange(10**6)
                )
                feeder.send([current], now)
                feeder.send([previous], now - length)  # often a flushed window
                i += 1
        except Exception as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            recording_done.set()

    threads = [threading.Thread(target=flusher) for _ in range(flushers)]
    threads.append(threading.Thread(target=recorder))
    for t in threads:
        t.start()
    try:
        while not recording_done.wait(0.01):
            clock.advance(length / 10)
    finally:
        recording_done.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sum(1 for r in reports if r.windows) >= 2, "the flushers did not run concurrently"

    clock.advance(3 * length)
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def _backend_waiting_on_lock(database_url: str, pid: int, timeout: float = 10) -> None:
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                cur.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
                row = cur.fetchone()
                if row and row[0] == "Lock":
                    return
                time.sleep(0.02)
        raise AssertionError(f"backend {pid} never waited on a lock")
    finally:
        admin.close()


def test_concurrent_flushers_claiming_leftover_snapshots_do_not_deadlock(
    redis, pool, config, clock, database_url
):
    """Two flushers re-driving the same leftover snapshots must both succeed.

    Flusher A claims [leftovers..., its own snapshot]; flusher B, started
    after A froze, claims the same snapshots sorted, with A's first. When
    A's claim of the leftovers is held up for a moment (by a third
    flusher's transaction, here a bare ledger insert), each ends up
    holding a ledger row the other waits for.
    """
    feeder = Feeder(redis, config)
    on_shard_0 = (
        t for t in (f"s0-{i}" for i in itertools.count()) if shard_of(t, config.shards) == 0
    )
    end = end_of(K0, config)
    late = flush_time(end, config) + 100  # C's flush ids sort after A's

    def send(content: str) -> None:
        feeder.send([feeder.make("acme", content, cdn=11, p2p=1, token=next(on_shard_0))], START)

    # Two crashed flushers (C1, C2) left a snapshot each of window K0.
    for content in ("one", "two"):
        send(content)
        clock.now = late
        with pytest.raises(Crash):
            flush_once(redis, pool, config, clock, failpoint=crash_at("after_freeze"))
    leftovers = snapshots.pending_snapshots(redis, config)
    assert len(leftovers) == 2
    send("three")  # a straggler, frozen by A

    pools = {name: RecordingPool(0, 2, config.database_url, connect_timeout=5) for name in "AB"}
    outcome: dict[str, Any] = {}
    a_frozen = threading.Event()

    def run(name: str, now: float) -> None:
        def failpoint(point: str) -> None:
            if name == "A" and point == "after_freeze":
                a_frozen.set()

        try:
            outcome[name] = flush_once(
                redis, pools[name], config, FakeClock(now), failpoint=failpoint
            )
        except Exception as exc:  # reported by the test thread
            outcome[name] = exc

    # A third transaction holds the second leftover's ledger row for a moment.
    holder = psycopg2.connect(config.database_url)
    a = threading.Thread(target=run, args=("A", flush_time(end, config)))
    b = threading.Thread(target=run, args=("B", late))
    try:
        with holder.cursor() as cur:
            cur.execute(
                "INSERT INTO flush_ledger (snapshot_id, window_end) VALUES (%s, %s)",
                (leftovers[1].id, datetime.fromtimestamp(end, tz=timezone.utc)),
            )
        a.start()
        assert a_frozen.wait(10)
        _backend_waiting_on_lock(database_url, _pid_of(pools["A"]))
        b.start()
        _backend_waiting_on_lock(database_url, _pid_of(pools["B"]))
        holder.rollback()  # the third flusher failed: its claim goes away
        a.join(20)
        b.join(20)
    finally:
        holder.rollback()
        holder.close()
        for t in (a, b):
            t.join(20)
        for p in pools.values():
            p.closeall()

    errors = {n: o for n, o in outcome.items() if isinstance(o, BaseException)}
    try:
        assert errors == {}, f"a concurrent flusher failed: {errors}"
    finally:
        # Whatever happened, nothing was lost or doubled: a last flush makes it exact.
        flush_once(redis, pool, config, clock)
        assert stats_table(pool) == feeder.model.rows()
        assert_drained(redis, config)


def _pid_of(pool_: RecordingPool, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while pool_.last is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool_.last is not None, "the flusher never took a connection"
    return pool_.last.get_backend_pid()


@shard_counts
@pytest.mark.parametrize("how", ["deleted", "expired"])
def test_lock_lost_mid_flush_while_another_flusher_runs(redis, pool, config, clock, how):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=2)
    clock.now = flush_time(ends[-1], config)
    lock_key = Keys(config.key_prefix).flush_lock()
    short_lock = replace(config, flush_lock_seconds=0.3)
    b_frozen, go_b = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def second_flusher() -> None:
        r = redis_client(config)
        p = database_pool(config, 2)

        def failpoint(point: str) -> None:
            if point == "after_freeze":
                b_frozen.set()
                go_b.wait(20)

        try:
            outcome["B"] = flush_with_lock(r, p, config, clock, failpoint=failpoint)
        except Exception as exc:  # reported by the test thread
            outcome["B"] = exc
        finally:
            r.close()
            p.closeall()

    b = threading.Thread(target=second_flusher)
    lost_at = []

    def lose_lock(point: str) -> None:
        if point == "mid_batch" and not lost_at:
            lost_at.append(point)
            if how == "deleted":
                redis.delete(lock_key)
            else:
                time.sleep(3 * short_lock.flush_lock_seconds)
                assert not redis.exists(lock_key)
            # Payloads still arrive for the window being flushed.
            feeder.send([feeder.make("late", "during", cdn=42, p2p=1)], K0 * 300 + 299)
            b.start()
            assert b_frozen.wait(20)

    try:
        a_report = flush_with_lock(
            redis, pool, short_lock if how == "expired" else config, clock, failpoint=lose_lock
        )
        assert lost_at
        assert a_report is not None
        held_by_b = redis.get(lock_key)
        assert held_by_b is not None, "A released (or let expire) the lock B holds"
    finally:
        go_b.set()
        b.join(30)
    assert not b.is_alive()
    assert not isinstance(outcome.get("B"), BaseException), outcome.get("B")
    assert outcome.get("B") is not None
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def test_flush_with_lock_skips_while_another_flusher_holds_it(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    populate(feeder, windows=1)
    clock.now = flush_time(end_of(K0, config), config)
    other = redis.lock(Keys(config.key_prefix).flush_lock(), timeout=30)
    assert other.acquire(blocking=False)
    try:
        assert flush_with_lock(redis, pool, config, clock) is None
        assert stats_table(pool) == {}
    finally:
        other.release()
    assert flush_with_lock(redis, pool, config, clock) is not None
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


# --- schema ------------------------------------------------------------------------------------


def _migrations_table(pool: ThreadedConnectionPool) -> list[tuple[int, str]]:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        rows = cur.fetchall()
        conn.rollback()
    return rows


def test_migrate_is_idempotent(pool):
    shipped = [(version, name) for version, name, _ in migrations()]
    assert shipped, "no migration shipped"
    assert _migrations_table(pool) == shipped
    assert migrate(pool) == []
    assert migrate(pool) == []
    assert _migrations_table(pool) == shipped


def test_concurrent_migrations_on_a_fresh_schema_apply_once(database_url):
    schema = f"test_migrate_{random.randrange(16**12):012x}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    pools = [create_pool(with_search_path(database_url, schema), 1) for _ in range(4)]
    results: list[Any] = []
    try:
        threads = [
            threading.Thread(target=lambda p=p: results.append(_try(migrate, p))) for p in pools
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        shipped = [f"{v:04d}_{n}" for v, n, _ in migrations()]
        assert sorted(results, key=len) == [[], [], [], shipped]
        assert _migrations_table(pools[0]) == [(v, n) for v, n, _ in migrations()]
    finally:
        for p in pools:
            p.closeall()
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def _try(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the assertion shows it
        return exc

"""The Redis window buffer on fakeredis: the INGEST and FREEZE Lua scripts.

Runs every test with 1 and 4 shards (the ``shards`` fixture of conftest).
Time only moves when a test moves the FakeClock: fakeredis expires keys on
real time, which does not advance meaningfully here, so token memory is only
ever *kept* in these tests; its TTL is checked directly.

A payload repeating a token's sessionDuration is a retry (de-duplicated), so
every payload here gets a fresh sessionDuration unless a test says otherwise.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import fakeredis
import pytest

from payload_stats.buffer import ingest, snapshots
from payload_stats.buffer.ingest import Recorded
from payload_stats.buffer.keys import Keys, encode_ident, session_key, shard_of
from payload_stats.buffer.scripts import Scripts
from payload_stats.buffer.snapshots import Row, Snapshot
from payload_stats.config import Config
from tests.conftest import START, FakeClock
from tests.conftest import payload as base_payload

L = 300
K = 5_985_624  # the window holding START, which is 1 s into it
K_START = K * L
K_END = (K + 1) * L
PREFIX = "unit"

# Short (< L * 1000) and distinct: a fresh payload, never a retry.
_durations = itertools.count(1_000)


def payload(**fields) -> dict:
    """conftest's payload, with a fresh short sessionDuration unless one is given."""
    return base_payload(**{"sessionDuration": next(_durations), **fields})


@pytest.fixture
def config(shards: int) -> Config:
    """Overrides conftest's (which needs PostgreSQL): no servers at all."""
    return Config(key_prefix=PREFIX, shards=shards, window_seconds=L, flush_batch_size=3)


@pytest.fixture
def redis() -> Iterator[fakeredis.FakeRedis]:
    """Overrides conftest's: a private in-memory server with Lua (lupa)."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def scripts(redis) -> Scripts:
    return Scripts(redis)


@pytest.fixture
def send(redis, scripts, config, clock: FakeClock):
    """send(*payloads): record them at the clock's time."""

    def send(*payloads: dict) -> Recorded:
        return ingest.record(redis, scripts, config, payloads, clock.now)

    return send


@pytest.fixture
def flush(redis, scripts, config):
    """flush(k, flush_id): freeze window k in every shard, read, release.

    Returns {(customer, content): (cdn, p2p, sessions, payloads)}, summed over
    shards, the way PostgreSQL ends up holding them.
    """

    def flush(k: int, flush_id: str = "f1") -> dict[tuple[str, str], tuple[int, int, int, int]]:
        totals: dict[tuple[str, str], Counter] = {}
        for shard in range(config.shards):
            snapshot = Snapshot(k=k, shard=shard, flush_id=flush_id)
            if not snapshots.freeze(redis, scripts, config, snapshot):
                continue
            for batch in snapshots.read_snapshot(redis, config, snapshot):
                for row in batch:
                    total = totals.setdefault((row.customer, row.content), Counter())
                    total.update(cdn=row.cdn, p2p=row.p2p, s=row.sessions, n=row.payloads)
            snapshots.release(redis, config, snapshot)
        return {pair: (t["cdn"], t["p2p"], t["s"], t["n"]) for pair, t in sorted(totals.items())}

    return flush


def sessions_of(rows: dict) -> int:
    return sum(sessions for _, _, sessions, _ in rows.values())


def start(token: str, **fields) -> dict:
    """A payload with bytes and a short sessionDuration: starts a session if the token is new."""
    return payload(token=token, **fields)


def zero(token: str, **fields) -> dict:
    """A zero-byte payload with a short sessionDuration."""
    return payload(**{"token": token, "cdn": 0, "p2p": 0, **fields})


# --- sums -----------------------------------------------------------------


def test_sums_per_customer_and_content(send, flush) -> None:
    send(payload(token="t1", customer="acme", content="m1", cdn=100, p2p=10))
    send(payload(token="t2", customer="acme", content="m1", cdn=200, p2p=20))
    send(payload(token="t3", customer="acme", content="m2", cdn=400, p2p=0))
    send(payload(token="t4", customer="beta", content="m1", cdn=0, p2p=800))
    send(payload(token="t1", customer="acme", content="m1", cdn=1, p2p=2))

    assert flush(K) == {
        ("acme", "m1"): (301, 32, 2, 3),
        ("acme", "m2"): (400, 0, 1, 1),
        ("beta", "m1"): (0, 800, 1, 1),
    }


def test_separator_lookalikes_stay_apart(send, flush) -> None:
    send(
        payload(token="t1", customer="a:b", content="c", cdn=1, p2p=0),
        payload(token="t2", customer="a", content="b:c", cdn=2, p2p=0),
        payload(token="t3", customer="1:a", content="b", cdn=4, p2p=0),
        payload(token="t4", customer="{0}", content="}{", cdn=8, p2p=0),
        payload(token="t5", customer="é", content="直播", cdn=16, p2p=0),
    )

    assert flush(K) == {
        ("1:a", "b"): (4, 0, 1, 1),
        ("a", "b:c"): (2, 0, 1, 1),
        ("a:b", "c"): (1, 0, 1, 1),
        ("{0}", "}{"): (8, 0, 1, 1),
        ("é", "直播"): (16, 0, 1, 1),
    }


def test_payloads_are_counted(send, flush) -> None:
    for i in range(7):
        send(payload(token=f"t{i % 3}", cdn=0, p2p=0, sessionDuration=10**9 + i))

    assert flush(K) == {("acme", "movie-1"): (0, 0, 0, 7)}


def test_one_call_may_carry_many_payloads(send, flush) -> None:
    recorded = send(*(payload(token=f"t{i}", cdn=i, p2p=2 * i) for i in range(20)))

    assert recorded == Recorded(accepted=20, duplicates=0, sessions=20)
    assert flush(K) == {("acme", "movie-1"): (190, 380, 20, 20)}


def test_terabyte_payloads_sum_exactly(send, flush) -> None:
    for _ in range(5):
        send(payload(cdn=10**12, p2p=10**12 - 1))

    assert flush(K) == {("acme", "movie-1"): (5 * 10**12, 5 * 10**12 - 5, 1, 5)}


@pytest.mark.parametrize("shards", [1])  # 10,000 payloads: once is enough
def test_sums_beyond_two_to_the_53_stay_exact(send, flush) -> None:
    # A double holds odd integers exactly only up to 2**53 (~9.007e15).
    odd = 10**12 - 1
    for i in range(10):
        send(*(payload(token=f"t{i}-{j}", cdn=odd, p2p=odd) for j in range(1000)))

    rows = flush(K)

    assert rows == {("acme", "movie-1"): (10_000 * odd, 10_000 * odd, 10_000, 10_000)}
    assert 10_000 * odd > 2**53


# --- sessions (SPEC section 4) ---------------------------------------------


def sessions(recorded: Recorded) -> int:
    return recorded.sessions


def test_a_new_token_with_a_short_duration_starts_a_session(send, flush) -> None:
    recorded = send(payload(token="new", sessionDuration=L * 1000 - 1))

    assert recorded == Recorded(accepted=1, duplicates=0, sessions=1)
    assert flush(K) == {("acme", "movie-1"): (250, 100, 1, 1)}


@pytest.mark.parametrize("duration", [L * 1000, L * 1000 + 1, 10**12])
def test_a_new_token_with_a_long_duration_starts_none(send, flush, duration: int) -> None:
    assert sessions(send(payload(token="resumed", sessionDuration=duration))) == 0
    assert sessions(send(zero("resumed", sessionDuration=duration + 30_000))) == 0

    assert flush(K) == {("acme", "movie-1"): (250, 100, 0, 2)}


def test_a_seen_token_with_bytes_starts_none(send, clock, flush) -> None:
    assert sessions(send(zero("t", sessionDuration=L * 1000))) == 0  # seen, not started
    clock.advance(30)

    assert sessions(send(start("t", cdn=1, p2p=0))) == 0
    assert sessions(send(start("t", cdn=0, p2p=1))) == 0
    assert flush(K) == {("acme", "movie-1"): (1, 1, 0, 3)}


def test_a_seen_token_that_never_started_starts_with_a_zero_byte_payload(
    send, clock, flush
) -> None:
    assert sessions(send(payload(token="t", sessionDuration=L * 1000 + 5))) == 0
    clock.advance(30)
    assert sessions(send(zero("t", sessionDuration=L * 1000))) == 0  # not short
    clock.advance(30)

    assert sessions(send(zero("t"))) == 1
    clock.advance(30)
    assert sessions(send(zero("t"))) == 0

    assert flush(K) == {("acme", "movie-1"): (250, 100, 1, 4)}


def test_the_same_token_twice_in_one_call_starts_one_session(send, flush) -> None:
    recorded = send(zero("t"), zero("t"), start("t"))

    assert recorded == Recorded(accepted=3, duplicates=0, sessions=1)
    assert flush(K) == {("acme", "movie-1"): (250, 100, 1, 3)}


def test_a_started_token_never_starts_again(send, clock, flush) -> None:
    # Zero-byte payloads with a short duration every 30 s for four windows,
    # each window flushed once it is over: still one session.
    counted = []
    per_window = []
    for w in range(4):
        for i in range(10):
            clock.now = (K + w) * L + 10 + 30 * i
            counted.append(sessions(send(zero("t"))))
        per_window.append(flush(K + w, flush_id=f"f{w}"))

    assert counted == [1] + [0] * 39
    assert per_window == [
        {("acme", "movie-1"): (0, 0, 1, 10)},
        {("acme", "movie-1"): (0, 0, 0, 10)},
        {("acme", "movie-1"): (0, 0, 0, 10)},
        {("acme", "movie-1"): (0, 0, 0, 10)},
    ]


def test_a_session_started_at_a_window_end_is_not_counted_in_the_next(send, clock, flush) -> None:
    clock.now = K_END - 0.001
    assert sessions(send(start("t"))) == 1
    clock.now = K_END  # next window
    assert sessions(send(zero("t"))) == 0
    assert sessions(send(start("t"))) == 0

    assert sessions_of(flush(K)) == 1
    assert sessions_of(flush(K + 1)) == 0


def test_a_session_is_not_counted_again_two_windows_later(send, clock, flush) -> None:
    clock.now = K_END - 0.001
    assert sessions(send(start("t"))) == 1
    clock.now = K_END + L + 10  # window K+2, nothing in K+1
    assert sessions(send(zero("t"))) == 0

    assert sessions_of(flush(K)) == 1
    assert sessions_of(flush(K + 2)) == 0


@pytest.mark.parametrize("first", [K_START, K_START + 1, K_END - 0.5], ids=["start", "1s", "end"])
def test_a_token_is_remembered_for_2L_of_silence(send, clock, first: float) -> None:
    clock.now = first
    assert sessions(send(zero("t"))) == 1

    clock.now = first + 2 * L
    assert sessions(send(zero("t"))) == 0


def test_a_token_silent_for_more_than_2L_may_start_again(send, clock) -> None:
    # Allowed by SPEC section 4 (memory may forget after 2L of silence): from
    # window K+3 on, the memory of window K is no longer consulted.
    clock.now = K_END - 0.001
    assert sessions(send(zero("t"))) == 1

    clock.now = K_END + 2 * L  # window K+3, 2L + 1 ms of silence
    assert sessions(send(zero("t"))) == 1


def test_each_payload_extends_the_memory(send, clock) -> None:
    # Every payload exactly 2L after the previous one, over eight windows.
    clock.now = K_START + 1
    assert sessions(send(zero("t"))) == 1
    for _ in range(4):
        clock.advance(2 * L)
        assert sessions(send(zero("t"))) == 0


def test_a_seen_token_is_remembered_too(send, clock) -> None:
    clock.now = K_START
    assert sessions(send(payload(token="t", sessionDuration=L * 1000))) == 0  # seen only
    clock.advance(2 * L)
    assert sessions(send(start("t"))) == 0  # seen, with bytes: none
    clock.advance(2 * L)
    assert sessions(send(zero("t"))) == 1


@pytest.mark.parametrize(
    ("now", "ttl_ms"), [(START, 900_000), (K_START, 901_000), (K_END - 0.25, 602_000)]
)
def test_token_memory_lives_until_2L_after_its_window(
    redis, config, send, clock, now: float, ttl_ms: int
) -> None:
    clock.now = now
    send(zero("t"))

    key = Keys(PREFIX).tokens(shard_of("t", config.shards), K)
    assert redis.hget(key, session_key(encode_ident("acme", "movie-1"), "t"))[:1] == b"2"  # started
    # (K+3)L + 1 s: the 2L after the latest instant of window K, plus a second.
    assert ttl_ms - 2_000 < redis.pttl(key) <= ttl_ms


def test_record_reports_sessions_started_across_shards(send) -> None:
    tokens = [f"tok-{i}" for i in range(12)]

    assert send(*(start(t) for t in tokens)) == Recorded(12, 0, 12)
    assert send(*(start(t) for t in tokens)) == Recorded(12, 0, 0)
    assert send(*(zero(t) for t in tokens), start("one-more")) == Recorded(13, 0, 1)


# --- retries: a repeated (token, sessionDuration) counts once ---------------


def test_a_retry_counts_nothing(send, flush) -> None:
    first = payload(token="t", cdn=7, p2p=3)

    assert send(first) == Recorded(accepted=1, duplicates=0, sessions=1)
    assert send(dict(first)) == Recorded(accepted=0, duplicates=1, sessions=0)
    assert send(first, first) == Recorded(accepted=0, duplicates=2, sessions=0)
    assert flush(K) == {("acme", "movie-1"): (7, 3, 1, 1)}


def test_a_retry_within_one_call_counts_once(send, flush) -> None:
    p = payload(token="t", cdn=7, p2p=3)

    assert send(p, p, p) == Recorded(accepted=1, duplicates=2, sessions=1)
    assert flush(K) == {("acme", "movie-1"): (7, 3, 1, 1)}


@pytest.mark.parametrize("later", [L, 2 * L - 1], ids=["next-window", "two-windows"])
def test_a_retry_after_its_window_was_flushed_counts_nothing(
    send, clock, flush, later: int
) -> None:
    p = payload(token="t", cdn=7, p2p=3)
    send(p)
    assert flush(K) == {("acme", "movie-1"): (7, 3, 1, 1)}

    clock.advance(later)

    assert send(p) == Recorded(accepted=0, duplicates=1, sessions=0)
    assert flush(window_of(clock.now)) == {}


def test_a_new_duration_of_the_same_token_is_not_a_retry(send, flush) -> None:
    assert send(payload(token="t", sessionDuration=30_000)).duplicates == 0
    assert send(payload(token="t", sessionDuration=60_000)).duplicates == 0
    assert send(payload(token="u", sessionDuration=30_000)).duplicates == 0  # other token

    assert flush(K) == {("acme", "movie-1"): (750, 300, 2, 3)}


def test_retries_are_counted_when_de_duplication_is_off(redis, scripts, config, clock, flush):
    off = replace(config, dedup_seconds=0)
    p = payload(token="t", cdn=7, p2p=3)

    for _ in range(3):
        ingest.record(redis, scripts, off, [p], clock.now)

    assert flush(K) == {("acme", "movie-1"): (21, 9, 1, 3)}


# --- freeze, read, release -------------------------------------------------


def window_of(t: float) -> int:
    return int(t // L)


def live_keys(redis, k: int) -> list[bytes]:
    return sorted(key for key in redis.keys(f"{PREFIX}:*:w:{k}:*"))


def test_freeze_moves_the_window_into_a_snapshot(redis, scripts, config, send) -> None:
    send(payload(token="a"), payload(token="b", content="m2", cdn=5, p2p=6))
    shard = shard_of("a", config.shards)
    snapshot = Snapshot(k=K, shard=shard, flush_id="f1")
    expected = 2 if shard_of("b", config.shards) == shard else 1

    assert snapshots.freeze(redis, scripts, config, snapshot) == expected

    keys = Keys(PREFIX)
    assert not redis.exists(keys.index(shard, K))
    assert redis.zscore(keys.windows(shard), K) is None
    assert snapshots.closed_windows(redis, config, shard, K) == []
    assert snapshots.pending_snapshots(redis, config) == [snapshot]
    rows = [row for batch in snapshots.read_snapshot(redis, config, snapshot) for row in batch]
    assert Row("acme", "movie-1", 250, 100, 1, 1, 30000) in rows
    assert len(rows) == expected


def test_stragglers_join_the_snapshot_until_collected_then_go_to_fresh_keys(
    redis, scripts, config, send, clock, flush
) -> None:
    send(payload(token="t", cdn=1, p2p=2, sessionDuration=1000))
    shard = shard_of("t", config.shards)
    first = Snapshot(k=K, shard=shard, flush_id="first")
    assert snapshots.freeze(redis, scripts, config, first) == 1

    clock.now = K_END - 0.001  # still window K
    # Its counter hash is still live: it moves into the snapshot with it.
    send(payload(token="t", cdn=10, p2p=20, sessionDuration=2000))
    assert snapshots.closed_windows(redis, config, shard, K) == []
    assert [list(b) for b in snapshots.read_snapshot(redis, config, first)] == [
        [Row("acme", "movie-1", 11, 22, 1, 2, 60000)]
    ]
    # Once collected, a later straggler starts a fresh live hash and index.
    send(payload(token="t", cdn=100, p2p=200, sessionDuration=3000))
    assert snapshots.closed_windows(redis, config, shard, K) == [K]
    assert flush(K) == {("acme", "movie-1"): (100, 200, 0, 1)}
    assert [list(b) for b in snapshots.read_snapshot(redis, config, first)] == [
        [Row("acme", "movie-1", 11, 22, 1, 2, 60000)]
    ]
    assert snapshots.pending_snapshots(redis, config) == [first]  # untouched until released


@pytest.mark.parametrize(("contents", "sizes"), [(8, [3, 3, 2]), (6, [3, 3]), (1, [1])])
def test_read_snapshot_yields_batches_of_flush_batch_size(
    redis, scripts, config, send, contents: int, sizes: list[int]
) -> None:
    # One token: every payload lands in the same shard.
    send(*(payload(token="t", content=f"m{i}", cdn=i) for i in range(contents)))
    snapshot = Snapshot(k=K, shard=shard_of("t", config.shards), flush_id="f1")
    snapshots.freeze(redis, scripts, config, snapshot)

    batches = list(snapshots.read_snapshot(redis, config, snapshot))

    assert [len(b) for b in batches] == sizes
    rows = sorted((r for b in batches for r in b), key=lambda r: r.cdn)
    assert [(r.content, r.cdn, r.p2p, r.payloads) for r in rows] == [
        (f"m{i}", i, 100, 1) for i in range(contents)
    ]
    # One token under several contents: one session each (docs/sessions.md).
    assert [r.sessions for r in rows] == [1] * contents


def test_release_deletes_the_snapshot_and_its_record(redis, scripts, config, send) -> None:
    send(*(payload(token="t", content=f"m{i}") for i in range(5)))
    shard = shard_of("t", config.shards)
    snapshot = Snapshot(k=K, shard=shard, flush_id="f1")
    snapshots.freeze(redis, scripts, config, snapshot)
    memory = Keys(PREFIX).tokens(shard, K)
    list(snapshots.read_snapshot(redis, config, snapshot))  # as the flusher does, first

    snapshots.release(redis, config, snapshot)

    assert redis.keys(f"{PREFIX}:*:x:*") == []
    assert not redis.hexists(Keys(PREFIX).snapshots(shard), snapshot.field)
    assert snapshots.pending_snapshots(redis, config) == []
    assert list(snapshots.read_snapshot(redis, config, snapshot)) == []
    assert (
        redis.hget(memory, session_key(encode_ident("acme", "m0"), "t"))[:1] == b"2"
    )  # not the snapshot's
    snapshots.release(redis, config, snapshot)  # idempotent
    assert sorted(redis.keys(f"{PREFIX}:*")) == [memory.encode()]


def test_release_leaves_other_snapshots_and_live_data(redis, scripts, config, send, clock) -> None:
    send(payload(token="t", content="old"))
    shard = shard_of("t", config.shards)
    keep = Snapshot(k=K, shard=shard, flush_id="keep")
    snapshots.freeze(redis, scripts, config, keep)
    send(payload(token="t", content="straggler"))
    drop = Snapshot(k=K, shard=shard, flush_id="drop")
    snapshots.freeze(redis, scripts, config, drop)
    clock.advance(L)
    send(payload(token="t", content="live"))

    snapshots.release(redis, config, drop)

    assert snapshots.pending_snapshots(redis, config) == [keep]
    assert [r.content for b in snapshots.read_snapshot(redis, config, keep) for r in b] == ["old"]
    assert len(live_keys(redis, K + 1)) == 2  # the index and one counter hash


def test_pending_snapshots_lists_every_unreleased_snapshot(
    redis, scripts, config, send, clock
) -> None:
    tokens = [f"tok-{i}" for i in range(12)]
    send(*(payload(token=t) for t in tokens))
    clock.advance(L)
    send(*(payload(token=t) for t in tokens))
    used = sorted({shard_of(t, config.shards) for t in tokens})
    made = []
    for k, flush_id in ((K, "a:1"), (K + 1, "b")):
        for shard in used:
            snapshot = Snapshot(k=k, shard=shard, flush_id=flush_id)
            assert snapshots.freeze(redis, scripts, config, snapshot) >= 1
            made.append(snapshot)

    assert snapshots.pending_snapshots(redis, config) == sorted(made)

    snapshots.release(redis, config, made[0])

    assert snapshots.pending_snapshots(redis, config) == sorted(made[1:])


def test_freezing_an_empty_window_makes_no_snapshot(redis, scripts, config, send) -> None:
    send(payload(token="t"))  # window K only
    before = sorted(redis.keys("*"))

    for shard in range(config.shards):
        snapshot = Snapshot(k=K - 1, shard=shard, flush_id="f1")
        assert snapshots.freeze(redis, scripts, config, snapshot) == 0

    assert snapshots.pending_snapshots(redis, config) == []
    assert sorted(redis.keys("*")) == before


def test_freezing_a_window_twice_makes_one_snapshot(redis, scripts, config, send) -> None:
    send(payload(token="t"))
    shard = shard_of("t", config.shards)
    first = Snapshot(k=K, shard=shard, flush_id="f1")

    assert snapshots.freeze(redis, scripts, config, first) == 1
    assert snapshots.freeze(redis, scripts, config, Snapshot(k=K, shard=shard, flush_id="f2")) == 0

    assert snapshots.pending_snapshots(redis, config) == [first]


def test_freeze_touches_only_its_window(redis, scripts, config, send, clock, flush) -> None:
    send(payload(token="t", cdn=1, p2p=0))
    clock.advance(L)
    send(payload(token="t", cdn=2, p2p=0))

    assert flush(K) == {("acme", "movie-1"): (1, 0, 1, 1)}
    assert flush(K + 1) == {("acme", "movie-1"): (2, 0, 0, 1)}

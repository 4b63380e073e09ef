"""The buffer's Lua scripts (INGEST, FREEZE, COLLECT) through ``payload_stats.buffer``.

Every case runs on two backends: ``fakeredis`` (in memory, its Lua 5.1
through lupa; ``pytest tests/integration/test_buffer.py -k fakeredis`` needs
no server) and ``redis``, a real server (``TEST_REDIS_URL``, or the embedded
one), where the real Lua interpreter and the real ``HINCRBY`` run. A case
that only a real server can show is marked ``real_redis_only`` with its
reason.

Payloads are recorded with ``buffer.ingest.record`` at the FakeClock's time;
``send`` checks every call's ``Recorded`` against the reference model
(``tests/support/model.py``) wherever the rules allow only one answer, and
the tests state the numbers that matter by hand as well. Windows are read
back with ``freeze``, ``read_snapshot`` and ``release``, as the flusher
does. Both backends expire keys on real time, which barely moves here: token
memory is only ever kept, and its TTL is checked directly.

Token memory values (``app/buffer/lua/ingest.lua``): a state character ("1"
seen, "2" session started), then the sessionDurations accepted per window,
``|k:,d1,d2,``, pruned to the de-duplication horizon.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace

import fakeredis
import pytest
from redis import Redis

from payload_stats.buffer import ingest, snapshots
from payload_stats.buffer.connection import redis_client
from payload_stats.buffer.ingest import Recorded
from payload_stats.buffer.keys import Keys, encode_ident, session_key, shard_of
from payload_stats.buffer.scripts import Scripts
from payload_stats.buffer.snapshots import Row as SnapshotRow
from payload_stats.buffer.snapshots import Snapshot
from payload_stats.config import Config
from payload_stats.windows import window_index
from tests.conftest import START, FakeClock
from tests.conftest import payload as base_payload
from tests.support.model import Model, Row

L = 300
K = window_index(START, L)  # START is 1 s into window K
K_START = K * L
K_END = (K + 1) * L

# Short (< L * 1000) and distinct: a fresh payload, never a retry.
_durations = itertools.count(1_000)


def payload(**fields) -> dict:
    """conftest's payload, with a fresh short sessionDuration unless one is given."""
    return base_payload(**{"sessionDuration": next(_durations), **fields})


def zero(token: str, **fields) -> dict:
    """A zero-byte payload (a fresh short sessionDuration unless one is given)."""
    return payload(**{"token": token, "cdn": 0, "p2p": 0, **fields})


def real_redis_only(reason: str):
    """Run a case on the real server only; ``reason`` says what fakeredis cannot show."""
    assert reason
    return pytest.mark.parametrize("backend", ["redis"], indirect=True)


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(params=["fakeredis", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def config(request, backend: str, shards: int) -> Config:
    """Overrides conftest's: Redis only, no PostgreSQL schema."""
    config = Config(key_prefix="buffer", shards=shards, window_seconds=L, flush_batch_size=7)
    if backend == "fakeredis":
        return config
    return replace(
        config,
        redis_url=request.getfixturevalue("redis_url"),
        key_prefix=request.getfixturevalue("key_prefix"),
    )


@pytest.fixture
def redis(backend: str, config: Config) -> Iterator[Redis]:
    """Overrides conftest's: a private fakeredis server, or the real one."""
    if backend == "fakeredis":
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    else:
        client = redis_client(config)
    yield client
    client.close()


@pytest.fixture
def scripts(redis) -> Scripts:
    return Scripts(redis)


@pytest.fixture
def model(config: Config) -> Model:
    return Model.of(config)


@pytest.fixture
def send(redis, scripts, config, clock: FakeClock, model: Model):
    """send(*payloads): record them at the clock's time (with ``config`` and its
    ``model``, unless given); checks the answer against the model wherever the
    rules allow only one."""

    def send(*payloads: dict, config: Config = config, model: Model = model) -> Recorded:
        recorded = ingest.record(redis, scripts, config, payloads, clock.now)
        answers = [model.receive(clock.now, p) for p in payloads]
        if all(a.counted is not None and a.starts is not None for a in answers):
            assert recorded == Recorded(
                accepted=sum(1 for a in answers if a.counted),
                duplicates=sum(1 for a in answers if not a.counted),
                sessions=sum(1 for a in answers if a.starts),
            ), "ingest answered otherwise than the rules (tests/support/model.py)"
        return recorded

    return send


@pytest.fixture
def flush(redis, scripts, config):
    """flush(k): freeze window k in every shard, read it, release it.

    Returns {(customer, content): Row} summed over shards, the way PostgreSQL
    ends up holding them.
    """
    counter = itertools.count()

    def flush(k: int) -> dict[tuple[str, str], Row]:
        flush_id = f"f{next(counter)}"
        totals: dict[tuple[str, str], Row] = defaultdict(Row)
        for shard in range(config.shards):
            snapshot = Snapshot(k=k, shard=shard, flush_id=flush_id)
            if not snapshots.freeze(redis, scripts, config, snapshot):
                continue
            for batch in snapshots.read_snapshot(redis, config, snapshot):
                assert len(batch) <= config.flush_batch_size
                for r in batch:
                    row = Row(r.cdn, r.p2p, r.sessions, r.payloads)
                    totals[(r.customer, r.content)] = (
                        totals.get((r.customer, r.content), Row()) + row
                    )
            snapshots.release(redis, config, snapshot)
        return dict(sorted(totals.items()))

    return flush


def keys_of(redis, config: Config, pattern: str = "*") -> list[bytes]:
    """Keys under the test's prefix (SCAN may return a key twice: a set)."""
    return sorted(set(redis.scan_iter(match=f"{config.key_prefix}:{pattern}", count=1000)))


def memory(
    redis, config: Config, token: str, k: int, customer: str = "acme", content: str = "movie-1"
) -> bytes | None:
    """The memory value of (customer, content, token) in window ``k``'s token hash."""
    key = session_key(encode_ident(customer, content), token)
    return redis.hget(Keys(config.key_prefix).tokens(shard_of(token, config.shards), k), key)


def groups(value: bytes) -> dict[int, list[int]]:
    """{window: [durations]} of a token memory value."""
    text = value.decode()[1:]
    assert re.fullmatch(r"(\|\d+:,(\d+,)+)*", text), value
    return {
        int(w): [int(d) for d in durations.strip(",").split(",")]
        for w, durations in re.findall(r"\|(\d+):([^|]*)", text)
    }


# --- sums -------------------------------------------------------------------------


def test_sums_per_customer_and_content(send, flush) -> None:
    send(payload(token="t1", customer="acme", content="m1", cdn=100, p2p=10))
    send(payload(token="t2", customer="acme", content="m1", cdn=200, p2p=20))
    send(payload(token="t3", customer="acme", content="m2", cdn=400, p2p=0))
    send(payload(token="t4", customer="beta", content="m1", cdn=0, p2p=800))
    send(payload(token="t1", customer="acme", content="m1", cdn=1, p2p=2))

    assert flush(K) == {
        ("acme", "m1"): Row(301, 32, 2, 3),
        ("acme", "m2"): Row(400, 0, 1, 1),
        ("beta", "m1"): Row(0, 800, 1, 1),
    }


def test_separator_lookalikes_stay_apart(send, flush) -> None:
    send(
        payload(token="t1", customer="a:b", content="c", cdn=1, p2p=0),
        payload(token="t2", customer="a", content="b:c", cdn=2, p2p=0),
        payload(token="t3", customer="1:a", content="b", cdn=4, p2p=0),
        payload(token="t4", customer="{0}", content="}{", cdn=8, p2p=0),
        payload(token="t5", customer="é", content="直播", cdn=16, p2p=0),
        payload(token="t6", customer="%d", content="|1:,2,", cdn=32, p2p=0),
    )

    assert flush(K) == {
        ("%d", "|1:,2,"): Row(32, 0, 1, 1),
        ("1:a", "b"): Row(4, 0, 1, 1),
        ("a", "b:c"): Row(2, 0, 1, 1),
        ("a:b", "c"): Row(1, 0, 1, 1),
        ("{0}", "}{"): Row(8, 0, 1, 1),
        ("é", "直播"): Row(16, 0, 1, 1),
    }


def test_every_payload_is_counted_bytes_or_not(send, flush) -> None:
    for i in range(7):
        send(payload(token=f"t{i % 3}", cdn=0, p2p=0, sessionDuration=10**9 + i))

    assert flush(K) == {("acme", "movie-1"): Row(0, 0, 0, 7)}


def test_one_call_may_carry_many_payloads(send, flush) -> None:
    recorded = send(*(payload(token=f"t{i}", cdn=i, p2p=2 * i) for i in range(20)))

    assert recorded == Recorded(accepted=20, duplicates=0, sessions=20)
    assert flush(K) == {("acme", "movie-1"): Row(190, 380, 20, 20)}


def test_terabyte_payloads_sum_exactly(send, flush) -> None:
    for _ in range(5):
        send(payload(cdn=10**12, p2p=10**12 - 1))

    assert flush(K) == {("acme", "movie-1"): Row(5 * 10**12, 5 * 10**12 - 5, 1, 5)}


@real_redis_only("the sums are Redis's own 64-bit HINCRBY; fakeredis re-implements it in Python")
@pytest.mark.parametrize("shards", [1], indirect=True)  # one counter hash for every payload
def test_one_counter_summed_past_two_to_the_53_stays_exact(send, flush) -> None:
    # 1000 devices sending 10 payloads each into one counter hash: every HINCRBY
    # adds 1 TB less a byte to a sum far beyond 2**53, where a double holds odd
    # integers no more; a sum kept in a Lua number would round, and print 1e+16.
    odd = 10**12 - 1
    for i in range(10):
        recorded = send(
            *(
                payload(token=f"t{j}", cdn=odd, p2p=odd - j, sessionDuration=30_000 * i + 1)
                for j in range(1000)
            )
        )
        assert recorded == Recorded(accepted=1000, duplicates=0, sessions=1000 if i == 0 else 0)

    p2p = 10 * sum(odd - j for j in range(1000))
    assert flush(K) == {("acme", "movie-1"): Row(10_000 * odd, p2p, 1000, 10_000)}
    assert 10_000 * odd > 2**53


# --- sessions (docs/sessions.md) --------------------------------------------------


def test_a_new_token_with_a_short_duration_starts_a_session(send, flush) -> None:
    assert send(payload(token="new", sessionDuration=L * 1000 - 1)) == Recorded(1, 0, 1)
    assert flush(K) == {("acme", "movie-1"): Row(250, 100, 1, 1)}


@pytest.mark.parametrize("duration", [L * 1000, L * 1000 + 1, 2**53 - 1 - 30_000])
def test_a_new_token_with_a_long_duration_starts_none(send, flush, duration: int) -> None:
    assert send(payload(token="resumed", sessionDuration=duration)).sessions == 0
    assert send(zero("resumed", sessionDuration=duration + 30_000)).sessions == 0

    assert flush(K) == {("acme", "movie-1"): Row(250, 100, 0, 2)}


def test_a_seen_token_with_bytes_starts_none(send, clock, flush) -> None:
    assert send(zero("t", sessionDuration=L * 1000)).sessions == 0  # seen, not started
    clock.advance(30)
    assert send(payload(token="t", cdn=1, p2p=0)).sessions == 0
    assert send(payload(token="t", cdn=0, p2p=1)).sessions == 0

    assert flush(K) == {("acme", "movie-1"): Row(1, 1, 0, 3)}


def test_a_seen_token_that_never_started_starts_with_a_zero_byte_payload(
    send, clock, flush
) -> None:
    assert send(payload(token="t", sessionDuration=L * 1000 + 5)).sessions == 0
    clock.advance(30)
    assert send(zero("t", sessionDuration=L * 1000)).sessions == 0  # not short
    clock.advance(30)
    assert send(zero("t")).sessions == 1
    clock.advance(30)
    assert send(zero("t")).sessions == 0

    assert flush(K) == {("acme", "movie-1"): Row(250, 100, 1, 4)}


def test_the_same_token_thrice_in_one_call_starts_one_session(send, flush) -> None:
    recorded = send(zero("t"), zero("t"), payload(token="t"))

    assert recorded == Recorded(accepted=3, duplicates=0, sessions=1)
    assert flush(K) == {("acme", "movie-1"): Row(250, 100, 1, 3)}


def test_a_started_token_never_starts_again(send, clock, flush) -> None:
    # Zero-byte payloads with short durations every 30 s for four windows,
    # each window flushed once it is over: still one session.
    counted = []
    per_window = []
    for w in range(4):
        for i in range(10):
            clock.now = (K + w) * L + 10 + 30 * i
            counted.append(send(zero("t")).sessions)
        per_window.append(flush(K + w))

    assert counted == [1] + [0] * 39
    assert per_window == [
        {("acme", "movie-1"): Row(0, 0, 1, 10)},
        {("acme", "movie-1"): Row(0, 0, 0, 10)},
        {("acme", "movie-1"): Row(0, 0, 0, 10)},
        {("acme", "movie-1"): Row(0, 0, 0, 10)},
    ]


def test_a_session_started_at_a_window_end_is_not_counted_in_the_next_ones(
    send, clock, flush
) -> None:
    clock.now = K_END - 0.001
    assert send(payload(token="t")).sessions == 1
    clock.now = K_END
    assert send(zero("t")).sessions == 0
    assert send(payload(token="t")).sessions == 0
    clock.now = K_END + L + 10  # window K + 2, nothing in between
    assert send(zero("t")).sessions == 0

    assert flush(K) == {("acme", "movie-1"): Row(250, 100, 1, 1)}
    assert flush(K + 1) == {("acme", "movie-1"): Row(250, 100, 0, 2)}
    assert flush(K + 2) == {("acme", "movie-1"): Row(0, 0, 0, 1)}


@pytest.mark.parametrize("first", [K_START, K_START + 1, K_END - 0.5], ids=["start", "1s", "end"])
def test_a_token_is_remembered_for_2L_of_silence(send, clock, first: float) -> None:
    clock.now = first
    assert send(zero("t")).sessions == 1
    clock.now = first + 2 * L
    assert send(zero("t")).sessions == 0


def test_a_token_silent_for_more_than_2L_is_forgotten_from_the_third_window_on(
    send, clock, model
) -> None:
    # docs/sessions.md allows forgetting after 2L of silence; the service does
    # once the payload's window is 3 windows after the token's last one.
    clock.now = K_END - 0.001
    assert send(zero("t")).sessions == 1
    clock.now = K_END + 2 * L  # window K + 3, 2L + 1 ms of silence

    assert send(zero("t")).sessions == 1
    assert model.bounds().totals[("acme", "movie-1")][1].sessions == 2  # the model allows it


def test_each_payload_moves_the_memory_to_its_window(redis, config, send, clock) -> None:
    clock.now = K_START + 1
    assert send(zero("t")).sessions == 1
    for i in range(1, 5):  # every payload exactly 2L after the previous one
        clock.advance(2 * L)
        assert send(zero("t")).sessions == 0
        k = K + 2 * i
        assert memory(redis, config, "t", k)[:1] == b"2"
        assert memory(redis, config, "t", k - 2) is None  # moved, not copied


def test_a_token_seen_without_a_session_is_remembered_too(send, clock) -> None:
    clock.now = K_START
    assert send(payload(token="t", sessionDuration=L * 1000)).sessions == 0  # seen only
    clock.advance(2 * L)
    assert send(payload(token="t")).sessions == 0  # seen, with bytes: none
    clock.advance(2 * L)
    assert send(zero("t")).sessions == 1


@pytest.mark.parametrize(
    ("now", "ttl_ms"), [(START, 900_000), (K_START, 901_000), (K_END - 0.25, 602_000)]
)
def test_token_memory_lives_until_2L_after_its_window(
    redis, config, send, clock, now: float, ttl_ms: int
) -> None:
    clock.now = now
    send(zero("t"))

    key = Keys(config.key_prefix).tokens(shard_of("t", config.shards), K)
    assert redis.hget(key, session_key(encode_ident("acme", "movie-1"), "t"))[:1] == b"2"
    # (K+3)L + 1 s: the 2L after the latest instant of window K, plus a second.
    assert ttl_ms - 2_000 < redis.pttl(key) <= ttl_ms


def test_record_reports_sessions_across_shards(send) -> None:
    tokens = [f"tok-{i}" for i in range(12)]

    assert send(*(payload(token=t) for t in tokens)) == Recorded(12, 0, 12)
    assert send(*(payload(token=t) for t in tokens)) == Recorded(12, 0, 0)
    assert send(*(zero(t) for t in tokens), payload(token="one-more")) == Recorded(13, 0, 1)


# --- retries (docs/retries.md) ----------------------------------------------------


def test_a_retry_counts_nothing(send, flush) -> None:
    first = payload(token="t", cdn=7, p2p=3)

    assert send(first) == Recorded(accepted=1, duplicates=0, sessions=1)
    assert send(dict(first)) == Recorded(accepted=0, duplicates=1, sessions=0)
    assert send(first, first) == Recorded(accepted=0, duplicates=2, sessions=0)
    assert flush(K) == {("acme", "movie-1"): Row(7, 3, 1, 1)}


def test_a_late_copy_finds_its_session_moved_on_to_the_next_window(
    redis, scripts, config, clock
) -> None:
    """A device's retry may reach Redis first, received just after a window's end,
    and the original (received just before it) last: the original must find the
    session in the next window's memory, and count nothing."""
    first = payload(token="t", cdn=7, p2p=3)
    retry = ingest.record(redis, scripts, config, [first], K_END + 0.5)
    late = ingest.record(redis, scripts, config, [dict(first)], K_END - 0.5)

    assert retry == Recorded(accepted=1, duplicates=0, sessions=1)
    assert late == Recorded(accepted=0, duplicates=1, sessions=0)


def test_a_retry_within_one_call_counts_once(send, flush) -> None:
    p = payload(token="t", cdn=7, p2p=3)
    q = payload(token="u", cdn=1, p2p=1)

    assert send(p, q, p, p, q) == Recorded(accepted=2, duplicates=3, sessions=2)
    assert flush(K) == {("acme", "movie-1"): Row(8, 4, 2, 2)}


@pytest.mark.parametrize("later", [L, 2 * L - 1], ids=["next-window", "2L-later"])
def test_a_retry_after_its_window_was_flushed_counts_nothing(send, clock, flush, later) -> None:
    p = payload(token="t", cdn=7, p2p=3)
    send(p)
    assert flush(K) == {("acme", "movie-1"): Row(7, 3, 1, 1)}

    clock.advance(later)

    assert send(p) == Recorded(accepted=0, duplicates=1, sessions=0)
    assert flush(window_index(clock.now, L)) == {}


def test_a_retry_three_windows_later_counts_again(send, clock, flush) -> None:
    """Past the horizon, and past 2L of silence: counted again, session included
    (the token may be forgotten, and is)."""
    p = payload(token="t", cdn=7, p2p=3)
    send(p)
    clock.advance(3 * L)

    assert send(p) == Recorded(accepted=1, duplicates=0, sessions=1)
    assert flush(K) == {("acme", "movie-1"): Row(7, 3, 1, 1)}
    assert flush(K + 3) == {("acme", "movie-1"): Row(7, 3, 1, 1)}


def test_a_duration_outside_the_horizon_is_no_retry_while_the_token_is_remembered(
    send, clock, flush
) -> None:
    """Window K's duration, seen again in window K + 3, is outside the 2-window horizon.

    The token sent in K + 1 and K + 2, so its record still lists window K's
    durations when the copy arrives; they must not be matched any more.
    """
    send(payload(token="t", cdn=1, p2p=0, sessionDuration=1000))
    for w in (1, 2):
        clock.now = START + w * L
        send(payload(token="t", cdn=1, p2p=0, sessionDuration=1000 + w * L * 1000))
    clock.now = START + 3 * L

    assert send(payload(token="t", cdn=50, p2p=0, sessionDuration=1000)) == Recorded(1, 0, 0)
    assert flush(K + 3) == {("acme", "movie-1"): Row(50, 0, 0, 1)}


def test_a_new_duration_of_the_same_token_is_not_a_retry(send, flush) -> None:
    assert send(payload(token="t", sessionDuration=30_000)).duplicates == 0
    assert send(payload(token="t", sessionDuration=60_000)).duplicates == 0
    assert send(payload(token="t", sessionDuration=3_000)).duplicates == 0  # a prefix of 30000
    assert send(payload(token="t", sessionDuration=300)).duplicates == 0  # and of 3000
    assert send(payload(token="u", sessionDuration=30_000)).duplicates == 0  # other token

    assert flush(K) == {("acme", "movie-1"): Row(1250, 500, 2, 5)}


def test_retries_are_counted_when_de_duplication_is_off(redis, config, send, flush) -> None:
    off = replace(config, dedup_seconds=0)
    model = Model.of(off)
    p = payload(token="t", cdn=7, p2p=3)

    for i in range(3):
        assert send(p, config=off, model=model) == Recorded(1, 0, int(i == 0))
    assert send(p, p, config=off, model=model) == Recorded(2, 0, 0)

    assert flush(K) == {("acme", "movie-1"): Row(35, 15, 1, 5)}
    assert memory(redis, config, "t", K) == b"2"  # no durations kept


# --- the retry record: bounded memory ---------------------------------------------


def test_the_duration_record_holds_only_the_last_three_windows(redis, config, send, clock):
    """A token sending every 30 s for 8 windows: its memory value stays short.

    With the default horizon (two windows) the record of window k keeps the
    durations of windows k-2, k-1 and k only, in one hash field of one
    window's token hash.
    """
    sent: dict[int, list[int]] = {}
    keys = Keys(config.key_prefix)
    shard = shard_of("t", config.shards)
    for w in range(8):
        k = K + w
        for i in range(10):
            clock.now = k * L + 5 + 30 * i
            duration = 1000 + 30_000 * (10 * w + i)
            assert send(payload(token="t", sessionDuration=duration)).duplicates == 0
            sent.setdefault(k, []).append(duration)

            value = memory(redis, config, "t", k)
            assert value is not None
            assert value[:1] == b"2"
            kept = {j: sent[j] for j in (k - 2, k - 1, k) if j in sent}
            assert groups(value) == kept
            expected = "2" + "".join(
                f"|{j}:," + "".join(f"{d}," for d in kept[j]) for j in sorted(kept)
            )
            assert value == expected.encode()
        # the token is held in one window's hash only
        holders = [
            j
            for j in range(K - 3, k + 1)
            if redis.hexists(
                keys.tokens(shard, j), session_key(encode_ident("acme", "movie-1"), "t")
            )
        ]
        assert holders == [k]

    assert len(memory(redis, config, "t", K + 7)) < 400
    # Durations of the last three windows are retries; older ones are not listed.
    assert send(payload(token="t", sessionDuration=sent[K + 5][0])).duplicates == 1
    assert send(payload(token="t", sessionDuration=sent[K + 7][-1])).duplicates == 1
    assert send(payload(token="t", sessionDuration=sent[K + 4][-1])).duplicates == 0


def test_pruning_keeps_retries_of_the_previous_window(redis, config, send, clock) -> None:
    send(payload(token="t", sessionDuration=1000))
    clock.advance(L)
    assert send(payload(token="t", sessionDuration=2000)) == Recorded(1, 0, 0)

    assert groups(memory(redis, config, "t", K + 1)) == {K: [1000], K + 1: [2000]}
    assert send(payload(token="t", sessionDuration=1000)) == Recorded(0, 1, 0)
    assert memory(redis, config, "t", K) is None


# --- freeze, read, release --------------------------------------------------------


def test_freeze_moves_the_window_into_a_snapshot(redis, scripts, config, send) -> None:
    send(payload(token="a"), payload(token="b", content="m2", cdn=5, p2p=6))
    shard = shard_of("a", config.shards)
    snapshot = Snapshot(k=K, shard=shard, flush_id="f1")
    expected = 2 if shard_of("b", config.shards) == shard else 1

    assert snapshots.freeze(redis, scripts, config, snapshot) == expected

    keys = Keys(config.key_prefix)
    assert not redis.exists(keys.index(shard, K))
    assert redis.zscore(keys.windows(shard), K) is None
    assert snapshots.closed_windows(redis, config, shard, K) == []
    assert snapshots.pending_snapshots(redis, config) == [snapshot]
    rows = [row for batch in snapshots.read_snapshot(redis, config, snapshot) for row in batch]
    assert SnapshotRow("acme", "movie-1", 250, 100, 1, 1, 30000) in rows
    assert len(rows) == expected


@pytest.mark.parametrize("shards", [1], indirect=True)  # every ident in one snapshot
def test_a_window_of_1201_idents_is_frozen_read_and_released(redis, scripts, config, send) -> None:
    n = 1201
    for start_at in range(0, n, 400):
        send(
            *(
                payload(token=f"t{i}", content=f"m{i}", cdn=i, p2p=1)
                for i in range(start_at, min(start_at + 400, n))
            )
        )
    snapshot = Snapshot(k=K, shard=0, flush_id="big")

    assert snapshots.freeze(redis, scripts, config, snapshot) == n
    assert redis.llen(Keys(config.key_prefix).snapshot_list(0, "big", K)) == n
    rows = [row for batch in snapshots.read_snapshot(redis, config, snapshot) for row in batch]
    assert sorted((r.content, r.cdn, r.p2p, r.sessions, r.payloads) for r in rows) == sorted(
        (f"m{i}", i, 1, 1, 1) for i in range(n)
    )
    snapshots.release(redis, config, snapshot)
    assert keys_of(redis, config, "*:x:*") == []


def test_stragglers_join_the_snapshot_until_collected_then_go_to_fresh_keys(
    redis, scripts, config, send, clock, flush
) -> None:
    send(payload(token="t", cdn=1, p2p=2))
    shard = shard_of("t", config.shards)
    first = Snapshot(k=K, shard=shard, flush_id="first")
    assert snapshots.freeze(redis, scripts, config, first) == 1

    clock.now = K_END - 0.001  # still window K
    # Its counter hash is still live: it moves into the snapshot with it.
    send(payload(token="t", cdn=10, p2p=20))
    assert snapshots.closed_windows(redis, config, shard, K) == []
    assert [list(b) for b in snapshots.read_snapshot(redis, config, first)] == [
        [SnapshotRow("acme", "movie-1", 11, 22, 1, 2, 60000)]
    ]
    # Once collected, a later straggler starts a fresh live hash and index.
    send(payload(token="t", cdn=100, p2p=200))
    assert snapshots.closed_windows(redis, config, shard, K) == [K]
    assert flush(K) == {("acme", "movie-1"): Row(100, 200, 0, 1)}
    assert [list(b) for b in snapshots.read_snapshot(redis, config, first)] == [
        [SnapshotRow("acme", "movie-1", 11, 22, 1, 2, 60000)]
    ]
    assert snapshots.pending_snapshots(redis, config) == [first]  # untouched until released


@pytest.mark.parametrize(("contents", "sizes"), [(15, [7, 7, 1]), (14, [7, 7]), (1, [1])])
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


def test_release_deletes_the_snapshot_and_keeps_token_memory(redis, scripts, config, send) -> None:
    send(*(payload(token="t", content=f"m{i}") for i in range(5)))
    shard = shard_of("t", config.shards)
    snapshot = Snapshot(k=K, shard=shard, flush_id="f1")
    snapshots.freeze(redis, scripts, config, snapshot)
    tokens = Keys(config.key_prefix).tokens(shard, K)
    list(snapshots.read_snapshot(redis, config, snapshot))  # as the flusher does, first

    snapshots.release(redis, config, snapshot)

    assert keys_of(redis, config, "*:x:*") == []
    assert not redis.hexists(Keys(config.key_prefix).snapshots(shard), snapshot.field)
    assert snapshots.pending_snapshots(redis, config) == []
    assert list(snapshots.read_snapshot(redis, config, snapshot)) == []
    assert memory(redis, config, "t", K, content="m0")[:1] == b"2"  # not the snapshot's
    snapshots.release(redis, config, snapshot)  # idempotent
    assert keys_of(redis, config) == [tokens.encode()]


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
    assert len(keys_of(redis, config, f"*:w:{K + 1}:*")) == 2  # the index and one counter hash


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
    before = keys_of(redis, config)

    for shard in range(config.shards):
        assert snapshots.freeze(redis, scripts, config, Snapshot(K - 1, shard, "f1")) == 0

    assert snapshots.pending_snapshots(redis, config) == []
    assert keys_of(redis, config) == before


def test_freezing_a_window_twice_makes_one_snapshot(redis, scripts, config, send) -> None:
    send(payload(token="t"))
    shard = shard_of("t", config.shards)
    first = Snapshot(k=K, shard=shard, flush_id="f1")

    assert snapshots.freeze(redis, scripts, config, first) == 1
    assert snapshots.freeze(redis, scripts, config, Snapshot(k=K, shard=shard, flush_id="f2")) == 0
    assert snapshots.pending_snapshots(redis, config) == [first]


def test_freeze_touches_only_its_window(send, clock, flush) -> None:
    send(payload(token="t", cdn=1, p2p=0))
    clock.advance(L)
    send(payload(token="t", cdn=2, p2p=0))

    assert flush(K) == {("acme", "movie-1"): Row(1, 0, 1, 1)}
    assert flush(K + 1) == {("acme", "movie-1"): Row(2, 0, 0, 1)}


def test_a_window_with_only_duplicates_has_nothing_to_flush(redis, config, send, clock, flush):
    p = payload(token="t")
    send(p)
    assert flush(K) == {("acme", "movie-1"): Row(250, 100, 1, 1)}
    clock.advance(L)

    assert send(p, p) == Recorded(0, 2, 0)
    keys = Keys(config.key_prefix)
    for shard in range(config.shards):
        assert snapshots.closed_windows(redis, config, shard, K + 1) == []
        assert not redis.exists(keys.index(shard, K + 1))

"""Counter overflow blocks nothing: spill fields in Redis, isolated rows in PostgreSQL.

A counter that would pass 2^63-1 continues in spill fields (``c1``, ``c2``, ...)
and is read back exactly; at the flush, a snapshot row past bigint, an
unreadable counter hash, or a pair whose ``stats`` row would pass bigint once the
staged sums are added goes into ``stats_quarantine`` (exact, numeric) in the
window's transaction, and everything else is written as usual. In process, on
the real Redis and PostgreSQL, with the FakeClock.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from payload_stats.buffer import keys as k_
from payload_stats.buffer.keys import Keys
from payload_stats.buffer.live import top_rows
from payload_stats.buffer.snapshots import buffered_windows, pending_snapshots
from payload_stats.flush.flusher import flush_once
from payload_stats.flush.scheduler import FlushJob
from payload_stats.postgres import quarantine
from payload_stats.windows import window_end, window_index
from tests.conftest import START, payload, write_rows
from tests.integration.test_exactness_support import (
    MAX_BIGINT,
    ledger_ids,
    metric,
    quarantine_table,
    stats_table,
    tokens_in_shards,
)

MAX_SAFE = 2**53 - 1
K = window_index(START, 300)
END = window_end(K, 300)
FLUSH_AT = END + 5  # end + grace of the config fixture


def post(client, path: str, body) -> tuple[int, object]:
    response = client.post(path, json=body)
    return response.status_code, response.get_json()


def counter_key(config, token: str, customer: str, content: str, k: int = K) -> bytes:
    shard = k_.shard_of(token, config.shards)
    return Keys(config.key_prefix).counters(shard, k, k_.encode_ident(customer, content))


def assert_drained(redis, config) -> None:
    """No live or frozen window data left (session memory stays, by design)."""
    assert buffered_windows(redis, config) == set()
    assert pending_snapshots(redis, config) == []
    left = [
        key
        for key in redis.scan_iter(match=f"{config.key_prefix}:*", count=1000)
        if b":w:" in key or b":x:" in key
    ]
    assert left == []


def quarantined_events(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "flush_quarantined"]


# --- (a) a counter past bigint in Redis ---------------------------------------------------------


@pytest.mark.parametrize("shards", [4], ids=["4shards"])
def test_spilled_counter_is_counted_then_isolated_exactly(
    config, redis, pool, client, clock, caplog
):
    caplog.set_level(logging.INFO)
    tokens = tokens_in_shards(4)
    big = tokens[0][0]
    first = payload(token=big, customer="big", content="movie", cdn=100, p2p=1, timespan=30000)
    assert post(client, "/stats", first) == (200, {"accepted": 1, "duplicates": 0})
    key = counter_key(config, big, "big", "movie")
    # Near the top already: the next payloads must continue in spill fields.
    redis.hset(key, mapping={"c": MAX_BIGINT - 1, "c1": MAX_BIGINT - 1, "p": MAX_BIGINT - 2,
                             "w": MAX_BIGINT - 3})  # fmt: skip

    batch = [
        payload(token=big, customer="big", content="movie", cdn=10**12, p2p=10**12,
                timespan=MAX_SAFE, sessionDuration=2400),
        payload(token=tokens[1][0], customer="small", content="x", cdn=10, p2p=20,
                timespan=1000, sessionDuration=500),
        payload(token=tokens[2][0], customer="small", content="y", cdn=3, p2p=0,
                timespan=2000, sessionDuration=400000),
        payload(token=big, customer="big", content="movie", cdn=5, p2p=0, timespan=7,
                sessionDuration=3600),
        payload(token=tokens[3][0], customer="small", content="x", cdn=11, p2p=0,
                timespan=3000, sessionDuration=700),
    ]  # fmt: skip
    assert post(client, "/stats/batch", batch) == (200, {"accepted": 5, "duplicates": 0})

    # Every payload counted: the overflow went on in c1, c2 (p1, w1), nothing failed.
    assert redis.hgetall(key) == {
        b"c": str(MAX_BIGINT - 1).encode(),
        b"c1": str(MAX_BIGINT - 1).encode(),
        b"c2": str(10**12 + 5).encode(),
        b"p": str(MAX_BIGINT - 2).encode(),
        b"p1": str(10**12).encode(),
        b"w": str(MAX_BIGINT - 3).encode(),
        b"w1": str(MAX_SAFE + 7).encode(),
        b"s": b"1",
        b"n": b"3",
    }
    cdn = 2 * (MAX_BIGINT - 1) + 10**12 + 5
    p2p = MAX_BIGINT - 2 + 10**12
    watch = MAX_BIGINT - 3 + MAX_SAFE + 7
    live = {(r.customer, r.content): r for r in top_rows(redis, config, limit=None).rows}
    assert (live["big", "movie"].cdn, live["big", "movie"].p2p, live["big", "movie"].watch_ms) == (
        cdn,
        p2p,
        watch,
    )

    clock.now = FLUSH_AT
    report = flush_once(redis, pool, config, clock)
    [window] = report.windows
    assert (window.written.rows, window.written.quarantined) == (2, 1)
    assert (window.written.cdn, window.written.p2p, window.written.payloads) == (24, 20, 3)

    [isolated] = quarantine_table(pool)
    assert isolated | {"id": 0} == {
        "id": 0,
        "time": END,
        "customer": "big",
        "content": "movie",
        "cdn": cdn,
        "p2p": p2p,
        "sessions": 1,
        "payloads": 3,
        "watch_ms": watch,
        "raw_key": None,
        "reason": "a counter past bigint in Redis",
        "snapshot_ids": ledger_ids(pool, END),
        "resolved_at": None,
        "resolution": None,
    }
    assert len(isolated["snapshot_ids"]) == 4  # one snapshot per shard, all in the ledger
    assert stats_table(pool) == {
        (END, "small", "x"): (21, 20, 2, 2, 4000),
        (END, "small", "y"): (3, 0, 0, 1, 2000),
    }
    assert_drained(redis, config)
    [event] = quarantined_events(caplog)
    assert (event.levelname, event.rows, event.reason) == (
        "ERROR",
        1,
        "a counter past bigint in Redis",
    )

    # A later window of another customer is not held up by the isolated row.
    clock.now = END + 10
    later = payload(token="later-1", customer="later", content="z", cdn=9, p2p=8, timespan=6)
    assert post(client, "/stats", later) == (200, {"accepted": 1, "duplicates": 0})
    clock.now = END + 300 + 5
    report = flush_once(redis, pool, config, clock)
    assert [w.written.rows for w in report.windows] == [1]
    assert stats_table(pool)[END + 300, "later", "z"] == (9, 8, 1, 1, 6)
    assert quarantine_table(pool) == [isolated]
    assert_drained(redis, config)


PARTIAL = (MAX_BIGINT - 10, 2, 1, 1, 3)  # (cdn, p2p, sessions, payloads, watch_ms) of one shard


@pytest.mark.parametrize("shards", [4], ids=["4shards"])
@pytest.mark.parametrize(
    ("chunk_rows", "rows", "isolated_sums", "part_row"),
    [
        (20, 1, tuple(2 * v for v in PARTIAL), None),  # one chunk: the summed partials
        (1, 2, PARTIAL, PARTIAL),  # a chunk per row: the first partial is added, not the second
    ],
    ids=["one chunk", "a chunk per row"],
)
def test_shard_partials_summing_past_bigint_are_isolated_exactly(
    config, redis, pool, client, clock, chunk_rows, rows, isolated_sums, part_row
):
    config = replace(config, flush_chunk_rows=chunk_rows)
    tokens = tokens_in_shards(4)
    for shard in (0, 1):
        body = payload(token=tokens[shard][0], customer="part", content="x", cdn=1, p2p=2,
                       timespan=3, sessionDuration=100)  # fmt: skip
        assert post(client, "/stats", body) == (200, {"accepted": 1, "duplicates": 0})
        # Each shard's partial fits a bigint; their sum does not.
        redis.hset(counter_key(config, tokens[shard][0], "part", "x"), "c", MAX_BIGINT - 10)
    other = payload(token=tokens[2][0], customer="other", content="x", cdn=4, p2p=5, timespan=6)
    assert post(client, "/stats", other) == (200, {"accepted": 1, "duplicates": 0})

    clock.now = FLUSH_AT
    [window] = flush_once(redis, pool, config, clock).windows
    assert (window.written.rows, window.written.quarantined) == (rows, 1)
    [isolated] = quarantine_table(pool)
    assert (isolated["customer"], isolated["content"], isolated["time"]) == ("part", "x", END)
    sums = ("cdn", "p2p", "sessions", "payloads", "watch_ms")
    assert tuple(isolated[c] for c in sums) == isolated_sums
    assert "past bigint" in isolated["reason"]
    assert isolated["snapshot_ids"] == ledger_ids(pool, END)
    expected = {(END, "other", "x"): (4, 5, 1, 1, 6)}
    if part_row:
        expected[END, "part", "x"] = part_row
    assert stats_table(pool) == expected
    assert_drained(redis, config)


# --- (b) an existing stats row near bigint ------------------------------------------------------


@pytest.mark.parametrize("shards", [4], ids=["4shards"])
def test_straggler_past_an_existing_row_is_isolated_and_the_row_kept(
    config, redis, pool, client, clock
):
    near = (MAX_BIGINT - 5, 7, 1, 1, 0)
    at = datetime.fromtimestamp(END, tz=timezone.utc)
    # Through the write path: stats rows have their partition and rollups.
    write_rows(pool, [(at, "acme", "movie-1", *near), (at, "acme", "movie-2", 100, 0, 0, 1, 10)])
    tokens = tokens_in_shards(4)
    sent = [
        payload(token=tokens[0][0], content="movie-1", cdn=10, p2p=1, timespan=100),
        payload(token=tokens[1][0], content="movie-1", cdn=20, p2p=2, timespan=200),
        payload(token=tokens[2][0], content="movie-2", cdn=5, p2p=6, timespan=7),
        payload(token=tokens[3][0], customer="other", content="z", cdn=1, p2p=1, timespan=1),
    ]
    assert post(client, "/stats/batch", sent) == (200, {"accepted": 4, "duplicates": 0})

    clock.now = FLUSH_AT
    [window] = flush_once(redis, pool, config, clock).windows
    assert (window.written.rows, window.written.quarantined) == (2, 1)
    [isolated] = quarantine_table(pool)
    assert (isolated["time"], isolated["customer"], isolated["content"]) == (END, "acme", "movie-1")
    # The staged sum of both shards, exactly, not the row it could not be added to.
    assert (
        isolated["cdn"],
        isolated["p2p"],
        isolated["sessions"],
        isolated["payloads"],
        isolated["watch_ms"],
    ) == (30, 3, 2, 2, 300)
    assert "past bigint" in isolated["reason"]
    assert isolated["snapshot_ids"] == ledger_ids(pool, END)
    assert stats_table(pool) == {
        (END, "acme", "movie-1"): near,
        (END, "acme", "movie-2"): (105, 6, 1, 2, 17),
        (END, "other", "z"): (1, 1, 1, 1, 1),
    }
    assert_drained(redis, config)

    # The same pair's next window is an ordinary row.
    clock.now = END + 10
    body = payload(token=tokens[0][0], content="movie-1", cdn=3, p2p=0, sessionDuration=9999)
    assert post(client, "/stats", body) == (200, {"accepted": 1, "duplicates": 0})
    clock.now = END + 300 + 5
    flush_once(redis, pool, config, clock)
    assert stats_table(pool)[END + 300, "acme", "movie-1"] == (3, 0, 0, 1, 30000)
    assert stats_table(pool)[END, "acme", "movie-1"] == near
    assert len(quarantine_table(pool)) == 1


# --- (c) a damaged counter hash -----------------------------------------------------------------


@pytest.mark.parametrize("shards", [4], ids=["4shards"])
@pytest.mark.parametrize("damage", ["value", "field", "ident"])
def test_unreadable_counter_hash_is_isolated_and_the_rest_flushes(
    config, redis, pool, client, clock, damage
):
    tokens = tokens_in_shards(4, 2)
    sent = [
        payload(token=tokens[0][0], customer="hurt", content="x", cdn=1, p2p=2, timespan=3),
        payload(token=tokens[1][0], customer="fine", content="y", cdn=40, p2p=50, timespan=60),
        payload(token=tokens[2][0], customer="fine", content="y", cdn=4, p2p=5, timespan=6),
    ]
    assert post(client, "/stats/batch", sent) == (200, {"accepted": 3, "duplicates": 0})
    shard = k_.shard_of(tokens[0][0], 4)
    keys = Keys(config.key_prefix)
    if damage == "ident":
        ident = b"no-length-prefix"
        key = keys.counters(shard, K, ident)
        redis.hset(key, mapping={"c": 5, "n": 1})
        redis.rpush(keys.index(shard, K), ident)
        redis.zadd(keys.windows(shard), {str(K): K})
        reason = "unreadable: malformed ident b'no-length-prefix'"
    else:
        ident = k_.encode_ident("hurt", "x")
        key = keys.counters(shard, K, ident)
        if damage == "value":
            redis.hset(key, "c", "abc")
            reason = "unreadable: invalid literal for int() with base 10: b'abc'"
        else:
            redis.hset(key, "zz", "5")
            reason = "unreadable: unexpected counter field b'zz'"
    fields = redis.hgetall(key)

    clock.now = FLUSH_AT
    [window] = flush_once(redis, pool, config, clock).windows
    assert window.written.quarantined == 1
    [isolated] = quarantine_table(pool)
    assert isolated | {"id": 0, "snapshot_ids": []} == {
        "id": 0,
        "time": END,
        "customer": None,
        "content": None,
        "cdn": 0,
        "p2p": 0,
        "sessions": 0,
        "payloads": 0,
        "watch_ms": 0,
        "raw_key": ident + b"\n" + repr(sorted(fields.items())).encode(),
        "reason": reason,
        "snapshot_ids": [],
        "resolved_at": None,
        "resolution": None,
    }
    assert isolated["reason"].startswith("unreadable")
    assert isolated["snapshot_ids"] == ledger_ids(pool, END)
    expected = {(END, "fine", "y"): (44, 55, 2, 2, 66)}
    if damage == "ident":  # the genuine pair's hash was not damaged
        expected[END, "hurt", "x"] = (1, 2, 1, 1, 3)
    assert stats_table(pool) == expected
    assert_drained(redis, config)


# --- (e) watch time counted like cdn ------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 4], ids=["1shard", "4shards"])
def test_watch_time_past_bigint_is_isolated_exactly(config, redis, pool, client, clock, shards):
    # One session's 1025 payloads (1 shard: one counter overflows into w1), or
    # 1025 sessions spread over 4 shards (each partial fits, their sum does not).
    def token(i: int) -> str:
        return "watcher" if shards == 1 else f"watcher-{i}"

    sent = [
        payload(token=token(i), customer="long", content="watch", cdn=1, p2p=0,
                timespan=MAX_SAFE, sessionDuration=1000 + i)
        for i in range(1025)
    ]  # fmt: skip
    normal = payload(token="n-1", customer="norm", content="x", cdn=2, p2p=3, timespan=MAX_SAFE)
    assert post(client, "/stats/batch", sent[:1000]) == (200, {"accepted": 1000, "duplicates": 0})
    assert post(client, "/stats/batch", [*sent[1000:], normal]) == (
        200,
        {"accepted": 26, "duplicates": 0},
    )
    watch = 1025 * MAX_SAFE
    assert watch > MAX_BIGINT
    if shards == 1:
        fields = redis.hgetall(counter_key(config, "watcher", "long", "watch"))
        assert (fields[b"w"], fields[b"w1"]) == (
            str(1024 * MAX_SAFE).encode(),
            str(MAX_SAFE).encode(),
        )
    [live] = [r for r in top_rows(redis, config, limit=None).rows if r.customer == "long"]
    assert (live.watch_ms, live.payloads) == (watch, 1025)

    clock.now = FLUSH_AT
    [window] = flush_once(redis, pool, config, clock).windows
    assert (window.written.rows, window.written.quarantined) == (1, 1)
    [isolated] = quarantine_table(pool)
    assert (isolated["customer"], isolated["content"]) == ("long", "watch")
    sessions = 1 if shards == 1 else 1025
    assert (
        isolated["cdn"],
        isolated["p2p"],
        isolated["sessions"],
        isolated["payloads"],
        isolated["watch_ms"],
    ) == (1025, 0, sessions, 1025, watch)
    assert "past bigint" in isolated["reason"]
    assert stats_table(pool) == {(END, "norm", "x"): (2, 3, 1, 1, MAX_SAFE)}
    assert_drained(redis, config)


# --- the scheduler's count on /metrics ----------------------------------------------------------


@pytest.mark.parametrize("shards", [1], ids=["1shard"])
def test_metrics_show_the_unresolved_isolated_rows(config, redis, pool, client, clock):
    def quarantined_rows() -> float:
        response = client.get("/metrics")
        assert response.status_code == 200
        return metric(response.get_data(as_text=True), "payload_stats_quarantined_rows")

    assert quarantined_rows() == 0
    write_rows(
        pool,
        [(datetime.fromtimestamp(END, tz=timezone.utc), "acme", "movie-1", MAX_BIGINT, 0, 0, 1, 0)],
    )
    assert post(client, "/stats", payload(cdn=1)) == (200, {"accepted": 1, "duplicates": 0})
    job = FlushJob(redis, pool, config, clock)
    clock.now = FLUSH_AT
    job()
    [isolated] = quarantine_table(pool)
    figures = Keys(config.key_prefix).flush_stats()
    assert redis.hget(figures, "quarantined") == b"1"  # recorded for every web replica
    assert quarantined_rows() == 1

    quarantine.discard(pool, isolated["id"], "test")
    job()
    assert redis.hget(figures, "quarantined") == b"0"
    assert quarantined_rows() == 0

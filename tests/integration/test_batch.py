"""POST /stats/batch, compressed bodies and retries end to end (docs/retries.md).

Everything goes through the Flask test client into a real Redis, with the
FakeClock as the service's clock; windows are flushed into a real PostgreSQL
with ``flush_once``. Every accepted request's answer, and every ``stats``
row, is compared exactly with the reference model (``tests/support/model.py``).
A refused request must leave the test's Redis keyspace exactly as it was
(DUMP and TTL of every key under the test's prefix, before and after).
"""

from __future__ import annotations

import gzip
import json
import re
import time
from dataclasses import replace
from typing import Any

import pytest

from payload_stats.buffer.keys import Keys, shard_of
from payload_stats.flush.flusher import flush_once
from payload_stats.web.app import create_app
from payload_stats.windows import window_index
from tests.conftest import START, payload, shard_counts
from tests.support.http import assert_error, ok
from tests.support.model import Model, Row
from tests.support.store import assert_unchanged, keyspace, stats_table

L = 300  # the fixtures' window length
GRACE = 5  # the fixtures' flush grace
K = window_index(START, L)
END = (K + 1) * L  # the time of START's window in PostgreSQL


# --- helpers -----------------------------------------------------------------


def as_json(items: Any) -> bytes:
    return json.dumps(items).encode("utf-8")


def as_ndjson(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item).encode("utf-8") + b"\n" for item in items)


def post(client, path: str, data: bytes, content_type="application/json", encoding=None):
    headers = {"Content-Encoding": encoding} if encoding is not None else {}
    return client.post(path, data=data, content_type=content_type, headers=headers)


def post_batch(client, data: bytes, content_type="application/json", encoding=None):
    return post(client, "/stats/batch", data, content_type, encoding)


@pytest.fixture
def model(config) -> Model:
    return Model.of(config)


@pytest.fixture
def send(client, clock, model):
    """send(items, data=None, ...): POST a batch (``data``: the body as sent, default
    a JSON array of ``items``); the answer must be the model's for ``items``."""

    def send(
        items: list[dict[str, Any]],
        data: bytes | None = None,
        content_type: str = "application/json",
        encoding: str | None = None,
        path: str = "/stats/batch",
    ) -> dict[str, int]:
        if data is None:
            data = as_json(items[0] if path == "/stats" else items)
        answer = ok(post(client, path, data, content_type, encoding))
        assert answer == model.receive_all(clock.now, items).body(), items
        return answer

    return send


def flush_until(redis, pool, config, end: int) -> None:
    """Flush every window ending at or before ``end`` (the app's clock is left alone)."""
    flush_once(redis, pool, config, lambda: end + GRACE)


def varied(i: int, prefix: str = "t") -> dict[str, Any]:
    """Payload ``i`` of a varied set: several customers and contents, big values."""
    return payload(
        token=f"{prefix}{i}",
        customer=f"c{i % 3}",
        content=f"m{i % 4}",
        cdn=10**12 - i,
        p2p=7 * i,
        sessionDuration=1000 + i if i % 5 else L * 1000 + i,  # every 5th: no session
    )


@pytest.fixture
def seeded(send, redis, key_prefix):
    """Some accepted payloads first, so "changes nothing" is checked against live state.

    The seed uses the tokens, customer and content of the bad requests below,
    so a partial write of a refused request would land on existing keys.
    """
    assert send([payload(token=f"b{i}") for i in range(9)]) == {"accepted": 9, "duplicates": 0}
    before = keyspace(redis, key_prefix)
    assert before, "the seed wrote nothing"
    return before


# --- JSON and NDJSON batches ------------------------------------------------------


def test_batches_and_single_posts_add_up_exactly(send, redis, pool, config, clock, model):
    send([varied(i) for i in range(40)])
    clock.advance(30)
    for i in range(40, 50):  # single payloads between the batches
        send([varied(i)], path="/stats")
    later = [
        payload(token=f"t{i}", customer="c0", content="m0", cdn=i, p2p=0, sessionDuration=31000 + i)
        for i in range(5)
    ]  # seen tokens: no session
    send([varied(i) for i in range(50, 60)] + later)
    clock.advance(L)  # the next window
    send([varied(i, prefix="n") for i in range(7)])
    send([payload(token="solo", cdn=3, p2p=4)], path="/stats")

    flush_until(redis, pool, config, END)
    assert stats_table(pool) == model.rows(until_end=END)
    flush_until(redis, pool, config, END + L)
    assert stats_table(pool) == model.rows()
    assert model.ends() == [END, END + L]


def test_a_batch_of_1000_is_accepted(send, redis, pool, config, model):
    send([payload(token=f"t{i}", cdn=i, p2p=1) for i in range(1000)])

    flush_until(redis, pool, config, END)
    assert (
        stats_table(pool)
        == model.rows()
        == {(END, "acme", "movie-1"): Row(499500, 1000, 1000, 1000, 30_000_000)}
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/x-ndjson", "application/x-ndjson; charset=utf-8", "application/ndjson"],
)
def test_ndjson_batch_skips_blank_lines(send, redis, pool, config, model, content_type):
    items = [varied(i) for i in range(6)]
    lines = [json.dumps(p).encode() for p in items]
    body = (
        b"\n"
        + lines[0]
        + b"\n\n"
        + lines[1]
        + b"\r\n"
        + b"   \n"
        + lines[2]
        + b"\n"
        + b"\t\n"
        + lines[3]
        + b"\n"
        + lines[4]
        + b"\r\n\r\n"
        + lines[5]  # no final newline
    )

    send(items, body, content_type)

    flush_until(redis, pool, config, END)
    assert stats_table(pool) == model.rows()


@pytest.mark.parametrize(
    ("lines", "bad_line"),
    [
        ([b"P", b"P", b"{not json", b"P"], 3),
        ([b"{not json"], 1),
        ([b"P", b"P", b"[1, 2"], 3),
        # Blank lines are skipped, but the message must still name the line a
        # user sees in an editor (the physical line number).
        ([b"P", b"", b"P", b"{not json", b"P"], 4),
        ([b"", b"", b"P", b"nul"], 4),
    ],
    ids=["middle", "only", "last", "after-blank-line", "after-two-blank-lines"],
)
def test_ndjson_bad_line_is_named_and_changes_nothing(
    client, redis, key_prefix, seeded, lines, bad_line
):
    good = iter(json.dumps(payload(token=f"b{i}", sessionDuration=5000)).encode() for i in range(9))
    body = b"\n".join(next(good) if line == b"P" else line for line in lines) + b"\n"

    resp = post_batch(client, body, "application/x-ndjson")

    err = assert_error(resp, 400, "invalid_json")
    assert re.search(rf"\bLine {bad_line}\b", err["message"]), err["message"]
    assert_unchanged(redis, key_prefix, seeded)


# --- all or nothing ---------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 4, 8], ids=["first", "middle", "last"])
def test_one_invalid_item_refuses_the_whole_batch(
    client, send, redis, pool, config, key_prefix, model, seeded, index
):
    # The seed's tokens with new durations: each would count if written.
    items = [payload(token=f"b{i}", cdn=1000 + i, sessionDuration=31000) for i in range(9)]
    bad = [*items[:index], {**items[index], "p2p": -1}, *items[index + 1 :]]

    resp = post_batch(client, as_json(bad))

    err = assert_error(resp, 400, "invalid_payload")
    assert set(err) == {"error", "message", "errors"}
    assert list(err["errors"]) == [str(index)]
    assert list(err["errors"][str(index)]) == ["p2p"]
    assert all(isinstance(m, str) and m for m in err["errors"][str(index)]["p2p"])
    assert_unchanged(redis, key_prefix, seeded)

    # Nothing was remembered either: the valid rest is no duplicate afterwards.
    assert send(items[:index] + items[index + 1 :]) == {"accepted": 8, "duplicates": 0}
    flush_until(redis, pool, config, END)
    assert stats_table(pool) == model.rows()


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_every_invalid_item_is_named_even_those_only_the_fallback_parser_reads(
    client, redis, key_prefix, seeded, content_type
):
    # orjson refuses integers past 64 bits and lone surrogate escapes; the
    # standard parser reads them, and the schema names the field.
    missing = payload(token="b2", sessionDuration=31000)
    del missing["token"]
    items = [
        as_json(payload(token="b0", sessionDuration=31000)),
        b"5",
        as_json(payload(token="b1", cdn=True, sessionDuration=31000)),
        as_json(missing),
        as_json(payload(token="b3", customer="a\u2028b", timespan=1.5, sessionDuration=31000)),
        as_json(payload(token="b4", cdn=2**64, sessionDuration=31000)),
        as_json(payload(token="b5", sessionDuration=31000)).replace(
            b'"p2p": 100', b'"p2p": 1' + b"0" * 5000
        ),
        as_json(payload(token="b6", content="a\ud800", sessionDuration=31000)),
        as_json(payload(token="b7", sessionDuration=31000, extra=-(2**70))),  # ignored
    ]
    assert b"\\ud800" in items[7] and len(items[6]) > 5000
    if content_type == "application/json":
        body = b"[" + b",".join(items) + b"]"
    else:
        body = b"\n".join(items)

    err = assert_error(post_batch(client, body, content_type), 400, "invalid_payload")

    assert {n: sorted(e) for n, e in err["errors"].items()} == {
        "1": ["_schema"],
        "2": ["cdn"],
        "3": ["token"],
        "4": ["customer", "timespan"],
        "5": ["cdn"],
        "6": ["p2p"],
        "7": ["content"],
    }
    assert "7 of 9 payloads are invalid (items 1, 2, 3, 4, 5, 6, 7)" in err["message"]
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"[]", "application/json", "invalid_batch"),
        (b" [ ] ", "application/json", "invalid_batch"),
        (b"{}", "application/json", "invalid_batch"),
        (as_json(payload()), "application/json", "invalid_batch"),  # one payload, not in an array
        (b'"payloads"', "application/json", "invalid_batch"),
        (b"null", "application/json", "invalid_batch"),
        (b"1", "application/json", "invalid_batch"),
        (b"true", "application/json", "invalid_batch"),
        (
            as_json([payload(token=f"x{i}") for i in range(1001)]),
            "application/json",
            "invalid_batch",
        ),
        (as_json({"items": [payload()]}), "application/json", "invalid_batch"),
        (b"\n\n  \n", "application/x-ndjson", "invalid_batch"),
        (
            as_ndjson([payload(token=f"x{i}") for i in range(1001)]),
            "application/x-ndjson",
            "invalid_batch",
        ),
        # Past 1000 lines the count is refused before any line is parsed.
        (
            as_ndjson([payload(token=f"x{i}") for i in range(1000)]) + b"{not even json}\n",
            "application/x-ndjson",
            "invalid_batch",
        ),
        (b"", "application/json", "invalid_json"),
        (b"[", "application/json", "invalid_json"),
        (b"[{}", "application/json", "invalid_json"),
        (b"[1,]", "application/json", "invalid_json"),
        (b"\xff[]", "application/json", "invalid_json"),
    ],
    ids=[
        "empty",
        "empty-spaced",
        "object",
        "payload",
        "string",
        "null",
        "number",
        "true",
        "1001-items",
        "wrapped",
        "ndjson-blank-lines-only",
        "ndjson-1001-lines",
        "ndjson-1000-lines-and-a-bad-one",
        "no-body",
        "open",
        "unclosed",
        "trailing-comma",
        "not-utf8",
    ],
)
def test_a_malformed_batch_is_refused(client, redis, key_prefix, seeded, body, content_type, code):
    assert_error(post_batch(client, body, content_type), 400, code)
    assert_unchanged(redis, key_prefix, seeded)


# --- compressed bodies --------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP", " gzip ", "identity"])
def test_a_gzip_single_payload_is_accepted(send, redis, pool, config, model, encoding):
    p = payload(cdn=12345, p2p=678)
    data = as_json(p) if encoding == "identity" else gzip.compress(as_json(p))

    send([p], data, encoding=encoding, path="/stats")

    flush_until(redis, pool, config, END)
    assert (
        stats_table(pool)
        == model.rows()
        == {(END, "acme", "movie-1"): Row(12345, 678, 1, 1, 30_000)}
    )


def test_gzip_batches_are_accepted(send, redis, pool, config, model):
    items = [varied(i) for i in range(30)]
    json_part, ndjson_part, multi_part = items[:10], items[10:20], items[20:]

    send(json_part, gzip.compress(as_json(json_part)), encoding="gzip")
    send(ndjson_part, gzip.compress(as_ndjson(ndjson_part)), "application/x-ndjson", "gzip")
    # Several gzip members, one after the other, are one body (RFC 1952).
    text = as_ndjson(multi_part)
    members = gzip.compress(text[:100]) + gzip.compress(text[100:500]) + gzip.compress(text[500:])
    send(multi_part, members, "application/x-ndjson", "gzip")

    flush_until(redis, pool, config, END)
    assert stats_table(pool) == model.rows()


GOOD_GZIP = gzip.compress(as_json([payload(token="b0", sessionDuration=31000)]))
PATHS = ("/stats", "/stats/batch")


@pytest.mark.parametrize(
    "body",
    [
        GOOD_GZIP[:-8],  # no trailer
        GOOD_GZIP[:-1],
        GOOD_GZIP[: len(GOOD_GZIP) // 2],
        GOOD_GZIP[:10],  # the header only
        GOOD_GZIP[:5],  # not even a whole header
        b"plain text, not gzip",
        b"\x1f\x8b\x08\x00garbage" + b"\x00" * 20,
        GOOD_GZIP[:-8] + b"\x00\x00\x00\x00" + GOOD_GZIP[-4:],  # wrong CRC
        GOOD_GZIP + b"trailing garbage",
    ],
    ids=[
        "no-trailer",
        "one-byte-short",
        "half",
        "header",
        "partial-header",
        "plain",
        "bad-deflate",
        "bad-crc",
        "trailing-garbage",
    ],
)
def test_bad_gzip_gets_400_invalid_gzip(client, redis, key_prefix, seeded, body):
    for path in PATHS:
        assert_error(post(client, path, body, encoding="gzip"), 400, "invalid_gzip")
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd", "gzip, br", "bogus"])
def test_unknown_content_encoding_gets_415(client, redis, key_prefix, seeded, encoding):
    for path in PATHS:
        err = assert_error(post(client, path, GOOD_GZIP, encoding=encoding), 415)
        assert err["error"] == "unsupported_encoding"
        assert encoding.strip().lower() in err["message"]
    assert_unchanged(redis, key_prefix, seeded)


def _bomb(limit: int) -> bytes:
    # A valid JSON prefix, then whitespace far past the limit: a few KB of gzip.
    return gzip.compress(b"[" + b" " * (8 * limit) + b"]", 9)


def _multi_member_bomb(limit: int) -> bytes:
    # Each member alone is under the limit; together they are over it.
    member = gzip.compress(b" " * (limit // 2 + 1), 9)
    return gzip.compress(b"[", 9) + member + member + gzip.compress(b"]", 9)


@pytest.mark.parametrize("make", [_bomb, _multi_member_bomb], ids=["one-member", "members"])
def test_gzip_bomb_gets_413_quickly(client, redis, config, key_prefix, seeded, make):
    body = make(config.max_body_bytes)
    assert len(body) < 16 * 1024, len(body)  # a few KB on the wire

    for path in PATHS:
        started = time.monotonic()
        resp = post(client, path, body, encoding="gzip")
        elapsed = time.monotonic() - started
        assert_error(resp, 413, "request_entity_too_large")
        assert elapsed < 1.0, elapsed
    assert_unchanged(redis, key_prefix, seeded)


def _padded(size: int, items: list[dict[str, Any]]) -> bytes:
    """``items`` as a JSON array of exactly ``size`` bytes (padded with spaces)."""
    text = as_json(items)
    assert len(text) <= size
    return text[:-1] + b" " * (size - len(text)) + b"]"


def test_a_decompressed_body_at_the_limit_is_accepted_one_byte_more_is_not(
    client, send, redis, pool, config, key_prefix, model
):
    limit = config.max_body_bytes
    items = [payload(token="edge", cdn=1, p2p=2)]
    before = keyspace(redis, key_prefix)

    resp = post_batch(client, gzip.compress(_padded(limit + 1, items)), encoding="gzip")
    assert_error(resp, 413)
    assert_unchanged(redis, key_prefix, before)

    send(items, gzip.compress(_padded(limit, items)), encoding="gzip")
    flush_until(redis, pool, config, END)
    assert stats_table(pool) == model.rows() == {(END, "acme", "movie-1"): Row(1, 2, 1, 1, 30_000)}


def test_a_body_over_the_limit_gets_413_plain_or_gzip_however_small(
    client, redis, config, key_prefix, seeded
):
    plain = _padded(config.max_body_bytes + 1, [payload(token="b0", sessionDuration=31000)])
    for path in PATHS:
        assert_error(post(client, path, plain), 413)
    big = as_json([payload(token=f"b{i % 9}", sessionDuration=31000 + i) for i in range(1000)])
    small = gzip.compress(big[:-1] + b" " * config.max_body_bytes + b"]")
    assert len(small) < config.max_body_bytes
    assert_error(post_batch(client, small, encoding="gzip"), 413)
    assert_unchanged(redis, key_prefix, seeded)


# --- retries: duplicates (docs/retries.md) ------------------------------------------


def test_a_retry_counts_nothing_in_a_batch_across_batches_and_single_posts(
    send, redis, pool, config, clock, model
):
    p1 = payload(token="a", cdn=1, p2p=10, sessionDuration=1000)
    p2 = payload(token="a", cdn=2, p2p=20, sessionDuration=31000)
    p3 = payload(token="b", cdn=4, p2p=40, sessionDuration=1000, content="other")
    zero = payload(token="z", cdn=0, p2p=0)  # zero bytes: could start a session again

    assert send([p1, p2, p1]) == {"accepted": 2, "duplicates": 1}
    clock.advance(1)
    assert send([p2, p3, p1]) == {"accepted": 1, "duplicates": 2}
    clock.advance(1)
    assert send([p3], path="/stats") == {"accepted": 0, "duplicates": 1}
    # Only the retry identity is compared: other bytes do not make it a new payload.
    assert send([{**p1, "cdn": 999}], path="/stats")["duplicates"] == 1
    send([{**p1, "customer": "x"}], path="/stats")  # the model's retry_identity decides
    assert send([p3, p3, p2]) == {"accepted": 0, "duplicates": 3}
    for _ in range(3):
        send([zero], path="/stats")
    assert send([zero]) == {"accepted": 0, "duplicates": 1}

    flush_until(redis, pool, config, END)
    assert stats_table(pool) == model.rows()
    assert model.rows()[(END, "acme", "movie-1")] == Row(3, 30, 2, 3, 90_000)  # p1, p2, zero
    assert model.rows()[(END, "acme", "other")] == Row(4, 40, 1, 1, 30_000)  # p3


def test_a_retry_of_a_payload_flushed_already_counts_nothing(
    send, redis, pool, config, clock, model
):
    p = payload(token="t", cdn=7, p2p=3)
    send([p], path="/stats")
    flush_until(redis, pool, config, END)

    clock.advance(L)  # window K + 1

    assert send([p], path="/stats") == {"accepted": 0, "duplicates": 1}
    assert send([p, p]) == {"accepted": 0, "duplicates": 2}
    flush_until(redis, pool, config, END + L)
    assert stats_table(pool) == model.rows() == {(END, "acme", "movie-1"): Row(7, 3, 1, 1, 30_000)}


@pytest.mark.parametrize(("dedup_seconds", "counted"), [(None, 1), (L, 2), (0, 5)])
def test_the_retry_horizon_is_STATS_DEDUP_SECONDS_in_whole_windows(
    redis, pool, config, clock, dedup_seconds, counted
):
    """A copy in the same window, the next one and the one after: duplicates
    within the horizon (two windows by default, one with 300 s), counted when
    it is off (0). A copy that counts starts no second session."""
    cfg = replace(config, dedup_seconds=dedup_seconds)
    client = create_app(cfg, clock=clock).test_client()
    model = Model.of(cfg)
    p = payload(token="t", cdn=7, p2p=3)
    for at, copies in ((START, 2), (START + L, 1), (START + 2 * L, 2)):
        clock.now = at
        answer = ok(post_batch(client, as_json([p] * copies)))
        assert answer == model.receive_all(at, [p] * copies).body()

    flush_until(redis, pool, cfg, END + 2 * L)
    assert stats_table(pool) == model.rows()
    assert sum(row.payloads for row in model.rows().values()) == counted
    assert sum(row.sessions for row in model.rows().values()) == 1


def test_one_token_flooding_a_window_is_still_answered(redis, pool, config, clock):
    """Nothing a client sends may produce a 5xx (docs/payload.md), however many payloads.

    A misbehaving device (or anyone holding a token) sends 12,000 payloads
    with distinct sessionDurations in one window, 1000 per batch. Each must
    be answered 200 well within the Redis timeout (0.5 s here; a batch takes
    a few tens of ms on an idle machine). The de-duplication record of the
    token must not make each call slower than the one before it: a record
    that lists every duration of the window is scanned and copied once per
    payload, so the cost of a batch grows with everything the token sent.
    """
    cfg = replace(config, redis_timeout_seconds=0.5)
    client = create_app(cfg, clock=clock).test_client()
    answers = []
    for i in range(12):
        items = [
            payload(token="flood", cdn=1, p2p=0, sessionDuration=L * 1000 + 1000 * i + j)
            for j in range(1000)
        ]
        resp = post_batch(client, as_json(items))
        answers.append((resp.status_code, resp.get_json()))

    assert answers == [(200, {"accepted": 1000, "duplicates": 0})] * 12
    flush_until(redis, pool, cfg, END)
    assert stats_table(pool) == {(END, "acme", "movie-1"): Row(12_000, 0, 0, 12_000, 360_000_000)}


# --- shards and Redis outages --------------------------------------------------------


@shard_counts
def test_a_batch_spanning_every_shard_lands_entirely(send, redis, pool, config, model):
    """One script call with one shard, one MULTI/EXEC of several with more."""
    items = [varied(i, prefix="tok-") for i in range(300)]
    assert {shard_of(p["token"], config.shards) for p in items} == set(range(config.shards))

    assert send(items) == {"accepted": 300, "duplicates": 0}

    keys = Keys(config.key_prefix)
    for shard in range(config.shards):
        assert redis.zscore(keys.windows(shard), K) == K
    # A retry of the whole batch is all duplicates, whatever the shard.
    assert send(items) == {"accepted": 0, "duplicates": 300}
    flush_until(redis, pool, config, END)
    assert stats_table(pool) == model.rows()


def test_redis_down_answers_503_json_for_a_batch(config, clock):
    down = replace(config, redis_url="redis://127.0.0.1:1/0")
    client = create_app(down, clock=clock).test_client()
    items = [payload(token=f"tok-{i}") for i in range(40)]  # every shard

    started = time.monotonic()
    resp = post_batch(client, as_json(items))
    elapsed = time.monotonic() - started

    assert_error(resp, 503, "unavailable")
    assert resp.headers["Retry-After"] == "1"
    assert elapsed < 3.0, elapsed
    ndjson = gzip.compress(as_ndjson(items))
    assert_error(post_batch(client, ndjson, "application/x-ndjson", "gzip"), 503, "unavailable")
    assert_error(post(client, "/stats", as_json(items[0])), 503, "unavailable")


def test_refusals_come_before_redis(config, clock):
    """With Redis down a bad request is still a 4xx: validation needs no Redis."""
    down = replace(config, redis_url="redis://127.0.0.1:1/0")
    client = create_app(down, clock=clock).test_client()

    assert_error(post_batch(client, b"[]"), 400, "invalid_batch")
    assert_error(post_batch(client, as_json([payload(cdn=-1)])), 400, "invalid_payload")
    assert_error(post_batch(client, b"x", encoding="gzip"), 400, "invalid_gzip")

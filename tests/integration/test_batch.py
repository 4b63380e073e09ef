"""POST /stats/batch, compressed bodies and retry de-duplication, end to end.

Everything goes through the Flask test client into a REAL Redis, with the
FakeClock as the service's clock; windows are flushed into a REAL PostgreSQL
with ``flush_once`` and the ``stats`` table is compared exactly
(``stats_rows``). A rejected request must leave the test's Redis keyspace
exactly as it was: every key under the test's prefix is read according to
its TYPE (and its TTL) before and after.

Retries: a payload with the token and sessionDuration of a payload already
counted within the de-duplication horizon (``STATS_DEDUP_SECONDS``, default
two windows, rounded up to whole windows) is answered as a duplicate and
counts nothing: no bytes, no session, no payload.
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
from tests.conftest import START, payload, shard_counts, stats_rows

L = 300  # the fixtures' window length
GRACE = 5  # the fixtures' flush grace
K = window_index(START, L)
END = (K + 1) * L  # the time of START's window in PostgreSQL

OK_1 = {"accepted": 1, "duplicates": 0}
DUP_1 = {"accepted": 0, "duplicates": 1}


# --- helpers -----------------------------------------------------------------


def as_json(items: Any) -> bytes:
    return json.dumps(items).encode("utf-8")


def as_ndjson(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item).encode("utf-8") + b"\n" for item in items)


def post_batch(client, data: bytes, content_type: str = "application/json", encoding=None):
    headers = {"Content-Encoding": encoding} if encoding is not None else {}
    return client.post("/stats/batch", data=data, content_type=content_type, headers=headers)


def post_one(client, data: bytes, encoding=None):
    headers = {"Content-Encoding": encoding} if encoding is not None else {}
    return client.post("/stats", data=data, content_type="application/json", headers=headers)


def post(client, path: str, data: bytes, encoding=None):
    if path == "/stats":
        return post_one(client, data, encoding)
    return post_batch(client, data, encoding=encoding)


def ok(resp) -> dict[str, int]:
    assert resp.status_code == 200, resp.get_data()[:500]
    assert resp.mimetype == "application/json"
    return resp.get_json()


def assert_error(resp, status: int, code: str | None = None) -> dict[str, Any]:
    """The JSON error body ``{"error": code, "message": text, ...}`` of ``resp``."""
    assert resp.status_code == status, resp.get_data()[:500]
    assert resp.mimetype == "application/json", resp.get_data()[:300]
    body = json.loads(resp.get_data())
    assert isinstance(body, dict), body
    assert isinstance(body.get("message"), str) and body["message"], body
    assert isinstance(body.get("error"), str) and body["error"], body
    if code is not None:
        assert body["error"] == code, body
    return body


def keyspace(redis, prefix: str) -> dict[bytes, tuple[bytes, Any, int]]:
    """{key: (type, value, PTTL)} of every key under the test's prefix."""
    found = {}
    for key in sorted(set(redis.scan_iter(match=f"{prefix}:*", count=1000))):
        kind = redis.type(key)
        if kind == b"hash":
            value: Any = redis.hgetall(key)
        elif kind == b"set":
            value = redis.smembers(key)
        elif kind == b"zset":
            value = redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            value = redis.lrange(key, 0, -1)
        elif kind == b"string":
            value = redis.get(key)
        else:
            raise AssertionError(f"unexpected key type {kind!r} of {key!r}")
        found[key] = (kind, value, redis.pttl(key))
    return found


def assert_unchanged(redis, prefix: str, before: dict) -> None:
    after = keyspace(redis, prefix)
    assert sorted(after) == sorted(before), "the request created or deleted keys"
    for key, (kind, value, pttl) in after.items():
        old_kind, old_value, old_pttl = before[key]
        assert (kind, value) == (old_kind, old_value), f"the request changed {key!r}"
        # No write may refresh a TTL (a persistent key stays persistent).
        if old_pttl < 0:
            assert pttl == old_pttl, f"the request set a TTL on {key!r}"
        else:
            assert 0 <= pttl <= old_pttl, f"the request refreshed the TTL of {key!r}"


def flush_until(redis, pool, config, end: int) -> None:
    """Flush every window ending at or before ``end`` (the app's clock is left alone)."""
    flush_once(redis, pool, config, lambda: end + GRACE)


class Model:
    """The expected ``stats`` rows (SPEC sections 3 and 4) of payloads that all count."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str, str], list[int]] = {}
        self.tokens: dict[str, str] = {}  # token -> "seen" | "started"

    def add(self, p: dict[str, Any], now: float) -> None:
        end = (window_index(now, L) + 1) * L
        row = self.rows.setdefault((end, p["customer"], p["content"]), [0, 0, 0])
        row[0] += p["cdn"]
        row[1] += p["p2p"]
        state = self.tokens.get(p["token"])
        zero = p["cdn"] + p["p2p"] == 0
        if p["sessionDuration"] < L * 1000 and state != "started" and (state is None or zero):
            row[2] += 1
            self.tokens[p["token"]] = "started"
        else:
            self.tokens.setdefault(p["token"], "seen")

    def expected(self) -> dict[tuple[int, str, str], tuple[int, int, int]]:
        return {key: tuple(row) for key, row in self.rows.items()}  # type: ignore[misc]


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
def seeded(client, redis, key_prefix):
    """Some accepted payloads first, so "changes nothing" is checked against live state.

    The seed uses the tokens, customer and content of the bad requests below,
    so a partial write of a rejected request would land on existing keys.
    """
    resp = post_batch(client, as_json([payload(token=f"b{i}") for i in range(9)]))
    assert ok(resp) == {"accepted": 9, "duplicates": 0}
    before = keyspace(redis, key_prefix)
    assert before, "the seed wrote nothing"
    return before


SEED_ROW = (9 * 250, 9 * 100, 9)  # (cdn, p2p, sessions) of ``seeded``


# --- JSON array batches ----------------------------------------------------------


def test_json_array_batch_is_counted_exactly_with_single_posts(client, redis, pool, config, clock):
    model = Model()
    first = [varied(i) for i in range(40)]
    assert ok(post_batch(client, as_json(first))) == {"accepted": 40, "duplicates": 0}
    for p in first:
        model.add(p, clock.now)

    clock.advance(30)
    for i in range(40, 50):  # single payloads between the batches
        assert ok(post_one(client, as_json(varied(i)))) == OK_1
        model.add(varied(i), clock.now)
    later = [
        payload(token=f"t{i}", customer="c0", content="m0", cdn=i, p2p=0, sessionDuration=31000 + i)
        for i in range(5)
    ]  # seen tokens: no session
    second = [varied(i) for i in range(50, 60)] + later
    assert ok(post_batch(client, as_json(second))) == {"accepted": 15, "duplicates": 0}
    for p in second:
        model.add(p, clock.now)

    clock.advance(L)  # the next window
    third = [varied(i, prefix="n") for i in range(7)]
    assert ok(post_batch(client, as_json(third))) == {"accepted": 7, "duplicates": 0}
    assert ok(post_one(client, as_json(payload(token="solo", cdn=3, p2p=4)))) == OK_1
    for p in [*third, payload(token="solo", cdn=3, p2p=4)]:
        model.add(p, clock.now)

    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {k: v for k, v in model.expected().items() if k[0] == END}
    flush_until(redis, pool, config, END + L)
    assert stats_rows(pool) == model.expected()
    assert {k[0] for k in model.expected()} == {END, END + L}
    # 48 new tokens, t0's zero-byte payload, 5 new tokens, "solo": the model is right
    assert sum(v[2] for v in model.expected().values()) == 48 + 1 + 5 + 1


def test_a_batch_of_1000_is_accepted(client, redis, pool, config):
    items = [payload(token=f"t{i}", cdn=i, p2p=1) for i in range(1000)]

    assert ok(post_batch(client, as_json(items))) == {"accepted": 1000, "duplicates": 0}

    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (499500, 1000, 1000)}


# --- NDJSON ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/x-ndjson", "application/x-ndjson; charset=utf-8", "application/ndjson"],
)
def test_ndjson_batch_skips_blank_lines(client, redis, pool, config, content_type):
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

    assert ok(post_batch(client, body, content_type)) == {"accepted": 6, "duplicates": 0}

    model = Model()
    for p in items:
        model.add(p, START)
    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == model.expected()


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


def test_ndjson_invalid_payload_names_its_index(client, redis, key_prefix, seeded):
    items = [payload(token="b0", sessionDuration=5000), payload(token="b1", cdn=-1)]

    resp = post_batch(client, as_ndjson(items), "application/x-ndjson")

    err = assert_error(resp, 400, "invalid_payload")
    assert set(err["errors"]) == {"1"}
    assert set(err["errors"]["1"]) == {"cdn"}
    assert_unchanged(redis, key_prefix, seeded)


# --- all or nothing -----------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 4, 8], ids=["first", "middle", "last"])
def test_one_invalid_item_rejects_the_whole_batch(
    client, redis, pool, config, key_prefix, seeded, index
):
    # The seed's tokens with new durations: each would count if written.
    items = [payload(token=f"b{i}", cdn=1000 + i, sessionDuration=31000) for i in range(9)]
    items[index] = {**items[index], "p2p": -1}

    resp = post_batch(client, as_json(items))

    err = assert_error(resp, 400, "invalid_payload")
    assert set(err) == {"error", "message", "errors"}
    assert list(err["errors"]) == [str(index)]
    assert list(err["errors"][str(index)]) == ["p2p"]
    assert all(isinstance(m, str) and m for m in err["errors"][str(index)]["p2p"])
    assert_unchanged(redis, key_prefix, seeded)

    # Nothing was remembered either: the valid rest is no duplicate afterwards.
    rest = items[:index] + items[index + 1 :]
    assert ok(post_batch(client, as_json(rest))) == {"accepted": 8, "duplicates": 0}
    flush_until(redis, pool, config, END)
    cdn = 9 * 250 + sum(p["cdn"] for p in rest)
    p2p = 9 * 100 + sum(p["p2p"] for p in rest)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (cdn, p2p, 9)}


def test_every_invalid_item_is_named(client, redis, key_prefix, seeded):
    missing = payload(token="b2", sessionDuration=31000)
    del missing["token"]
    items = [
        payload(token="b0", sessionDuration=31000),
        5,
        payload(token="b1", cdn=True, sessionDuration=31000),
        missing,
        payload(token="b3", customer="a\u2028b", timespan=1.5, sessionDuration=31000),
        payload(token="b4", sessionDuration=31000),
    ]

    err = assert_error(post_batch(client, as_json(items)), 400, "invalid_payload")

    assert sorted(err["errors"], key=int) == ["1", "2", "3", "4"]
    assert list(err["errors"]["1"]) == ["_schema"]
    assert list(err["errors"]["2"]) == ["cdn"]
    assert list(err["errors"]["3"]) == ["token"]
    assert sorted(err["errors"]["4"]) == ["customer", "timespan"]
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_values_only_the_fallback_parser_reads_are_named(
    client, redis, key_prefix, seeded, content_type
):
    # orjson refuses integers past 64 bits and lone surrogate escapes; the
    # standard parser reads them, and the schema names the field.
    items = [
        as_json(payload(token="b0", sessionDuration=31000)),
        as_json(payload(token="b1", cdn=2**64, sessionDuration=31000)),
        as_json(payload(token="b2", sessionDuration=31000)).replace(
            b'"p2p": 100', b'"p2p": 1' + b"0" * 5000
        ),
        as_json(payload(token="b3", content="a\ud800", sessionDuration=31000)),
        as_json(payload(token="b4", sessionDuration=31000, extra=-(2**70))),  # ignored
    ]
    assert b"\\ud800" in items[3] and len(items[2]) > 5000
    if content_type == "application/json":
        body = b"[" + b",".join(items) + b"]"
    else:
        body = b"\n".join(items)

    err = assert_error(post_batch(client, body, content_type), 400, "invalid_payload")

    assert err["errors"].keys() == {"1", "2", "3"}
    assert list(err["errors"]["1"]) == ["cdn"]
    assert list(err["errors"]["2"]) == ["p2p"]
    assert list(err["errors"]["3"]) == ["content"]
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b" [ ] ",
        b"{}",
        as_json(payload()),  # one payload, not in an array
        b'"payloads"',
        b"null",
        b"1",
        b"true",
        as_json([payload(token=f"x{i}") for i in range(1001)]),
        as_json({"items": [payload()]}),
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
    ],
)
def test_malformed_batch_gets_invalid_batch(client, redis, key_prefix, seeded, body):
    assert_error(post_batch(client, body), 400, "invalid_batch")
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize(
    "body",
    [
        b"\n\n  \n",
        as_ndjson([payload(token=f"x{i}") for i in range(1001)]),
        as_ndjson([payload(token=f"x{i}") for i in range(1000)]) + b"{not even json}\n",
    ],
    ids=["blank-lines-only", "1001-lines", "1000-lines-and-a-bad-one"],
)
def test_malformed_ndjson_batch_gets_invalid_batch(client, redis, key_prefix, seeded, body):
    assert_error(post_batch(client, body, "application/x-ndjson"), 400, "invalid_batch")
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize("body", [b"", b"[", b"[{}", b"[1,]", b"\xff[]"])
def test_unparsable_batch_gets_invalid_json(client, redis, key_prefix, seeded, body):
    assert_error(post_batch(client, body), 400, "invalid_json")
    assert_unchanged(redis, key_prefix, seeded)


# --- compressed bodies --------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP", " gzip "])
def test_gzip_single_payload_is_accepted(client, redis, pool, config, encoding):
    body = gzip.compress(as_json(payload(cdn=12345, p2p=678)))

    assert ok(post_one(client, body, encoding)) == OK_1

    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (12345, 678, 1)}


def test_gzip_batches_are_accepted(client, redis, pool, config):
    model = Model()
    items = [varied(i) for i in range(30)]
    json_part, ndjson_part, multi_part = items[:10], items[10:20], items[20:]

    assert ok(post_batch(client, gzip.compress(as_json(json_part)), encoding="gzip")) == {
        "accepted": 10,
        "duplicates": 0,
    }
    resp = post_batch(
        client, gzip.compress(as_ndjson(ndjson_part)), "application/x-ndjson", encoding="gzip"
    )
    assert ok(resp) == {"accepted": 10, "duplicates": 0}
    # Several gzip members, one after the other, are one body (RFC 1952).
    text = as_ndjson(multi_part)
    members = gzip.compress(text[:100]) + gzip.compress(text[100:500]) + gzip.compress(text[500:])
    resp = post_batch(client, members, "application/x-ndjson", encoding="gzip")
    assert ok(resp) == {"accepted": 10, "duplicates": 0}
    # identity is no encoding at all
    assert ok(post_one(client, as_json(varied(99)), "identity")) == OK_1

    for p in [*items, varied(99)]:
        model.add(p, START)
    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == model.expected()


GOOD_GZIP = gzip.compress(as_json([payload(token="b0", sessionDuration=31000)]))


@pytest.mark.parametrize("path", ["/stats", "/stats/batch"])
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
def test_bad_gzip_gets_400_invalid_gzip(client, redis, key_prefix, seeded, path, body):
    assert_error(post(client, path, body, "gzip"), 400, "invalid_gzip")
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize("path", ["/stats", "/stats/batch"])
@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd", "gzip, br", "bogus"])
def test_unknown_content_encoding_gets_415(client, redis, key_prefix, seeded, path, encoding):
    err = assert_error(post(client, path, GOOD_GZIP, encoding), 415, "unsupported_encoding")
    assert encoding.strip().lower() in err["message"]
    assert_unchanged(redis, key_prefix, seeded)


def _bomb(limit: int) -> bytes:
    # A valid JSON prefix, then whitespace far past the limit: a few KB of gzip.
    return gzip.compress(b"[" + b" " * (8 * limit) + b"]", 9)


def _multi_member_bomb(limit: int) -> bytes:
    # Each member alone is under the limit; together they are over it.
    member = gzip.compress(b" " * (limit // 2 + 1), 9)
    return gzip.compress(b"[", 9) + member + member + gzip.compress(b"]", 9)


@pytest.mark.parametrize("path", ["/stats", "/stats/batch"])
@pytest.mark.parametrize("make", [_bomb, _multi_member_bomb], ids=["one-member", "members"])
def test_gzip_bomb_gets_413_quickly(client, redis, config, key_prefix, seeded, path, make):
    body = make(config.max_body_bytes)
    assert len(body) < 16 * 1024, len(body)  # a few KB on the wire

    started = time.monotonic()
    resp = post(client, path, body, "gzip")
    elapsed = time.monotonic() - started

    assert_error(resp, 413)
    assert elapsed < 1.0, elapsed
    assert_unchanged(redis, key_prefix, seeded)


def _padded(size: int, items: list[dict[str, Any]]) -> bytes:
    """``items`` as a JSON array of exactly ``size`` bytes (padded with spaces)."""
    text = as_json(items)
    assert len(text) <= size
    return text[:-1] + b" " * (size - len(text)) + b"]"


def test_decompressed_body_at_the_limit_is_accepted_one_byte_more_is_not(
    client, redis, pool, config, key_prefix
):
    limit = config.max_body_bytes
    items = [payload(token="edge", cdn=1, p2p=2)]
    before = keyspace(redis, key_prefix)

    resp = post_batch(client, gzip.compress(_padded(limit + 1, items)), encoding="gzip")
    assert_error(resp, 413)
    assert_unchanged(redis, key_prefix, before)

    resp = post_batch(client, gzip.compress(_padded(limit, items)), encoding="gzip")
    assert ok(resp) == OK_1
    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (1, 2, 1)}


@pytest.mark.parametrize("path", ["/stats", "/stats/batch"])
def test_plain_body_over_the_limit_gets_413(client, redis, config, key_prefix, seeded, path):
    body = _padded(config.max_body_bytes + 1, [payload(token="b0", sessionDuration=31000)])

    assert_error(post(client, path, body), 413)
    assert_unchanged(redis, key_prefix, seeded)


def test_gzip_of_a_body_over_the_limit_gets_413_even_when_small(
    client, redis, config, key_prefix, seeded
):
    big = as_json([payload(token=f"b{i % 9}", sessionDuration=31000 + i) for i in range(1000)])
    big = big[:-1] + b" " * config.max_body_bytes + b"]"
    body = gzip.compress(big)
    assert len(body) < config.max_body_bytes

    assert_error(post_batch(client, body, encoding="gzip"), 413)
    assert_unchanged(redis, key_prefix, seeded)


# --- retries: duplicates ------------------------------------------------------------


def test_a_payload_twice_in_one_batch_counts_once(client, redis, pool, config):
    p = payload(token="t", cdn=7, p2p=3)

    assert ok(post_batch(client, as_json([p, p]))) == {"accepted": 1, "duplicates": 1}

    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (7, 3, 1)}


def test_duplicates_across_batches_and_single_posts_count_nothing(
    client, redis, pool, config, clock
):
    p1 = payload(token="a", cdn=1, p2p=10, sessionDuration=1000)
    p2 = payload(token="a", cdn=2, p2p=20, sessionDuration=31000)
    p3 = payload(token="b", cdn=4, p2p=40, sessionDuration=1000, content="other")

    assert ok(post_batch(client, as_json([p1, p2]))) == {"accepted": 2, "duplicates": 0}
    clock.advance(1)
    assert ok(post_batch(client, as_json([p2, p3, p1]))) == {"accepted": 1, "duplicates": 2}
    clock.advance(1)
    assert ok(post_one(client, as_json(p3))) == DUP_1
    assert ok(post_one(client, as_json(p1))) == DUP_1
    # A retry is recognised by token and sessionDuration, whatever else it says.
    assert ok(post_one(client, as_json({**p1, "cdn": 999, "customer": "x"}))) == DUP_1
    assert ok(post_batch(client, as_json([p3, p3, p2]))) == {"accepted": 0, "duplicates": 3}

    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {
        (END, "acme", "movie-1"): (3, 30, 1),
        (END, "acme", "other"): (4, 40, 1),
    }


def test_single_post_retry_is_a_duplicate(client, redis, pool, config):
    p = payload(token="t", cdn=0, p2p=0)  # zero bytes: could start a session again

    assert ok(post_one(client, as_json(p))) == OK_1
    assert ok(post_one(client, as_json(p))) == DUP_1
    assert ok(post_one(client, as_json(p))) == DUP_1
    assert ok(post_batch(client, as_json([p]))) == DUP_1

    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (0, 0, 1)}


def test_a_duplicate_of_a_flushed_payload_in_the_next_window_counts_nothing(
    client, redis, pool, config, clock
):
    p = payload(token="t", cdn=7, p2p=3)
    assert ok(post_one(client, as_json(p))) == OK_1
    flush_until(redis, pool, config, END)

    clock.advance(L)  # window K + 1

    assert ok(post_one(client, as_json(p))) == DUP_1
    assert ok(post_batch(client, as_json([p, p]))) == {"accepted": 0, "duplicates": 2}
    flush_until(redis, pool, config, END + L)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (7, 3, 1)}


def test_a_retry_after_the_horizon_counts_again(client, redis, pool, config, clock):
    """The documented behaviour past the horizon: a "retry" counts again.

    With the default horizon (two windows) a repeated token and
    sessionDuration three windows later is outside it, and the token itself
    has been silent for more than 2L, so token memory may have forgotten it
    (SPEC section 4): the payload is counted again, bytes and session alike.
    """
    p = payload(token="t", cdn=7, p2p=3)
    assert ok(post_one(client, as_json(p))) == OK_1

    clock.advance(3 * L)

    assert ok(post_one(client, as_json(p))) == OK_1
    flush_until(redis, pool, config, END + 3 * L)
    assert stats_rows(pool) == {
        (END, "acme", "movie-1"): (7, 3, 1),
        (END + 3 * L, "acme", "movie-1"): (7, 3, 1),
    }


def test_a_retry_after_the_horizon_counts_again_while_the_session_goes_on(
    client, redis, pool, config, clock
):
    """Past the horizon a payload counts again, even if its token kept sending.

    The default horizon is two windows: a payload of window K is a duplicate
    of the one before it up to window K + 2, not in window K + 3. Here the
    token keeps its memory alive with a payload every window, so its
    duration record still lists window K's duration when the late copy
    arrives in window K + 3; that old group is outside the horizon and must
    not make the copy a duplicate. The session started in window K is not
    started again (the token is remembered).
    """
    durations = [1000, L * 1000 + 1000, 2 * L * 1000 + 1000]
    for w, duration in enumerate(durations):
        clock.now = START + w * L
        resp = post_one(client, as_json(payload(token="t", cdn=1, p2p=0, sessionDuration=duration)))
        assert ok(resp) == OK_1

    clock.now = START + 3 * L
    late = payload(token="t", cdn=1000, p2p=0, sessionDuration=durations[0])

    assert ok(post_one(client, as_json(late))) == OK_1
    flush_until(redis, pool, config, END + 3 * L)
    assert stats_rows(pool) == {
        (END, "acme", "movie-1"): (1, 0, 1),
        (END + L, "acme", "movie-1"): (1, 0, 0),
        (END + 2 * L, "acme", "movie-1"): (1, 0, 0),
        (END + 3 * L, "acme", "movie-1"): (1000, 0, 0),
    }


def test_with_a_one_window_horizon_a_retry_two_windows_later_counts(redis, pool, config, clock):
    """STATS_DEDUP_SECONDS=300 is one window: a copy two windows later is no retry.

    Window K's payload and its copy in window K + 2 are more than 300 s
    apart, beyond the horizon, while token memory (2L) still holds the token:
    the copy counts its bytes, and starts no second session.
    """
    one_window = replace(config, dedup_seconds=L)
    assert one_window.dedup_windows == 1
    client = create_app(one_window, clock=clock).test_client()
    p = payload(token="t", cdn=7, p2p=3)
    assert ok(post_one(client, as_json(p))) == OK_1
    clock.advance(L)
    assert ok(post_one(client, as_json(p))) == DUP_1  # inside the horizon

    clock.advance(L)

    assert ok(post_one(client, as_json(p))) == OK_1
    flush_until(redis, pool, one_window, END + 2 * L)
    assert stats_rows(pool) == {
        (END, "acme", "movie-1"): (7, 3, 1),
        (END + 2 * L, "acme", "movie-1"): (7, 3, 0),
    }


def test_with_de_duplication_off_retries_count_every_time(redis, pool, config, clock):
    off = replace(config, dedup_seconds=0)
    assert off.dedup_windows == 0
    client = create_app(off, clock=clock).test_client()
    p = payload(token="t", cdn=7, p2p=3)

    for _ in range(3):
        assert ok(post_one(client, as_json(p))) == OK_1
    assert ok(post_batch(client, as_json([p, p]))) == {"accepted": 2, "duplicates": 0}
    clock.advance(L)
    assert ok(post_one(client, as_json(p))) == OK_1

    flush_until(redis, pool, off, END + L)
    assert stats_rows(pool) == {
        (END, "acme", "movie-1"): (35, 15, 1),  # one session: the token is remembered
        (END + L, "acme", "movie-1"): (7, 3, 0),
    }


def test_another_duration_or_another_token_is_not_a_duplicate(client, redis, pool, config):
    items = [
        payload(token="t", cdn=1, p2p=0, sessionDuration=1000),
        payload(token="t", cdn=2, p2p=0, sessionDuration=31000),
        payload(token="u", cdn=4, p2p=0, sessionDuration=1000),
        payload(token="t", cdn=8, p2p=0, sessionDuration=1000),  # the only duplicate
        payload(token="t", cdn=16, p2p=0, sessionDuration=1001),
    ]

    assert ok(post_batch(client, as_json(items))) == {"accepted": 4, "duplicates": 1}
    assert (
        ok(post_one(client, as_json(payload(token="u", cdn=32, p2p=0, sessionDuration=999))))
        == OK_1
    )

    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (1 + 2 + 4 + 16 + 32, 0, 2)}


@pytest.mark.parametrize("shards", [1])
def test_one_token_flooding_a_window_is_still_answered(redis, pool, config, clock):
    """Nothing a client sends may produce a 5xx (SPEC section 1), however many payloads.

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
    assert stats_rows(pool) == {(END, "acme", "movie-1"): (12_000, 0, 0)}


# --- shards and Redis outages --------------------------------------------------------


@shard_counts
def test_a_batch_spanning_every_shard_lands_entirely(client, redis, pool, config):
    items = [varied(i, prefix="tok-") for i in range(300)]
    assert {shard_of(p["token"], config.shards) for p in items} == set(range(config.shards))

    resp = post_batch(client, as_json(items))

    assert ok(resp) == {"accepted": 300, "duplicates": 0}
    keys = Keys(config.key_prefix)
    for shard in range(config.shards):
        assert redis.zscore(keys.windows(shard), K) == K
    # A retry of the whole batch is all duplicates, whatever the shard.
    assert ok(post_batch(client, as_json(items))) == {"accepted": 0, "duplicates": 300}
    model = Model()
    for p in items:
        model.add(p, START)
    flush_until(redis, pool, config, END)
    assert stats_rows(pool) == model.expected()
    assert sum(v[2] for v in model.expected().values()) == 240


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
    assert_error(
        post_batch(
            client, gzip.compress(as_ndjson(items)), "application/x-ndjson", encoding="gzip"
        ),
        503,
        "unavailable",
    )
    assert_error(post_one(client, as_json(items[0])), 503, "unavailable")


def test_rejections_come_before_redis(config, clock):
    """With Redis down a bad request is still a 4xx: validation needs no Redis."""
    down = replace(config, redis_url="redis://127.0.0.1:1/0")
    client = create_app(down, clock=clock).test_client()

    assert_error(post_batch(client, b"[]"), 400, "invalid_batch")
    assert_error(post_batch(client, as_json([payload(cdn=-1)])), 400, "invalid_payload")
    assert_error(post_batch(client, b"x", encoding="gzip"), 400, "invalid_gzip")

"""POST /stats through the Flask test client on a real Redis (SPEC sections 1 and 2).

Every accepted payload must show up, exactly, in its window's live counters
(read back through ``payload_stats.buffer``, never through hand-written
key names). Every rejected request must answer a 4xx JSON error
``{"error": ..., "message": ..., ...}`` naming the field at fault, and must
leave the test's whole Redis keyspace exactly as it was (DUMP of every key
under the test's prefix, before and after). Nothing a client sends may
produce a 5xx.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from payload_stats.buffer import keys as k_
from payload_stats.buffer import snapshots
from payload_stats.buffer.keys import Keys
from payload_stats.buffer.scripts import Scripts
from payload_stats.buffer.snapshots import Row, Snapshot
from payload_stats.web.app import create_app
from payload_stats.windows import window_index
from tests.conftest import payload

STR_LIMITS = {"token": 128, "customer": 256, "content": 256}
INT_LIMITS = {"timespan": 2**53 - 1, "p2p": 10**12, "cdn": 10**12, "sessionDuration": 2**53 - 1}
STR_FIELDS = tuple(STR_LIMITS)
INT_FIELDS = tuple(INT_LIMITS)
FIELDS = STR_FIELDS + INT_FIELDS

# Unicode categories a name may not hold: control characters (SPEC: "no NUL or
# other control characters"), lone surrogates (not text: UTF-8 cannot encode
# them), and line/paragraph separators (line breaks, not printable text).
FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}

# The example payload a device sends (the repository has no README yet; this
# is the canonical example of the exercise, with realistic values).
EXAMPLE = {
    "token": "1d3f5a7c-9b8e-4d2c-a1f0-6e5d4c3b2a19",
    "customer": "customer1",
    "content": "content1",
    "timespan": 30000,
    "p2p": 560065,
    "cdn": 321123,
    "sessionDuration": 120000,
}


# --- helpers -----------------------------------------------------------------


def encode(body: Any) -> bytes:
    return json.dumps(body).encode("ascii")


def base(**changes: Any) -> dict[str, Any]:
    """The payload bad requests are made from: the seed's token, customer and
    content (see ``seeded``), another sessionDuration (so it is no retry)."""
    return payload(**{"sessionDuration": 4_200, **changes})


def with_fields(**changes: Any) -> bytes:
    return encode(base(**changes))


def without(field: str) -> bytes:
    body = base()
    del body[field]
    return encode(body)


def with_raw(field: str, raw: str) -> bytes:
    """The base payload with ``field``'s value replaced by raw JSON text."""
    text = json.dumps(base(**{field: "__RAW__"}))
    return text.replace('"__RAW__"', raw).encode("utf-8")


def post_raw(client, data: bytes, content_type: str = "application/json"):
    return client.post("/stats", data=data, content_type=content_type)


def keyspace(redis, prefix: str) -> dict[bytes, tuple[bytes | None, int]]:
    """{key: (DUMP, PTTL)} of every key under the test's prefix."""
    names = sorted(set(redis.scan_iter(match=f"{prefix}:*", count=1000)))
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.dump(name)
        pipe.pttl(name)
    replies = pipe.execute()
    return {name: (replies[2 * i], replies[2 * i + 1]) for i, name in enumerate(names)}


def assert_unchanged(redis, prefix: str, before: dict[bytes, tuple[bytes | None, int]]) -> None:
    after = keyspace(redis, prefix)
    assert sorted(after) == sorted(before), "a rejected request created or deleted keys"
    for name, (dump, pttl) in after.items():
        old_dump, old_pttl = before[name]
        assert dump == old_dump, f"a rejected request changed {name!r}"
        # A refreshed EXPIRE would move the remaining time up again.
        assert pttl <= old_pttl, f"a rejected request refreshed the TTL of {name!r}"


def error_body(resp) -> dict[str, Any]:
    """The JSON error body of a non-2xx response, checked for its shape."""
    assert resp.mimetype == "application/json", resp.get_data()[:300]
    body = json.loads(resp.get_data())
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


def assert_error(resp, status: int, code: str | None = None, fields=None) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data()[:500]
    body = error_body(resp)
    if code is not None:
        assert body["error"] == code, body
    if fields is not None:
        assert isinstance(body.get("fields"), dict), body
        assert set(body["fields"]) == set(fields), body
        for name in fields:
            messages = body["fields"][name]
            assert messages and all(isinstance(m, str) and m for m in messages), body
    return body


def live_rows(redis, config, k: int) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """{(customer, content): (cdn, p2p, sessions, payloads)} of window ``k``, all shards."""
    keys = Keys(config.key_prefix)
    rows: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for shard in range(config.shards):
        for ident in redis.lrange(keys.index(shard, k), 0, -1):
            values = redis.hmget(keys.counters(shard, k, ident), k_.COUNTER_FIELDS)
            counts = tuple(int(v) if v is not None else 0 for v in values)
            pair = k_.decode_ident(ident)
            old = rows.get(pair, (0, 0, 0, 0))
            rows[pair] = tuple(a + b for a, b in zip(old, counts, strict=True))  # type: ignore[assignment]
    return rows


def counters(redis, config, k: int, body: dict[str, Any]) -> tuple[int, int, int, int]:
    """(cdn, p2p, sessions, payloads) of the live counter hash ``body`` adds to."""
    keys = Keys(config.key_prefix)
    shard = k_.shard_of(body["token"], config.shards)
    name = keys.counters(shard, k, k_.encode_ident(body["customer"], body["content"]))
    values = redis.hmget(name, k_.COUNTER_FIELDS)
    return tuple(int(v) if v is not None else 0 for v in values)  # type: ignore[return-value]


def assert_accepted(resp) -> None:
    """200 and one payload counted (a ``duplicates`` count, if any, is zero)."""
    assert resp.status_code == 200, resp.get_data()[:500]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body.pop("duplicates", 0) == 0, body
    assert body == {"accepted": 1}


def window(config, clock) -> int:
    return window_index(clock(), config.window_seconds)


def starts_session(body: dict[str, Any], config) -> int:
    """Sessions a payload of a never-seen token starts (SPEC section 4)."""
    return 1 if body["sessionDuration"] < config.window_ms else 0


@pytest.fixture
def seeded(client, redis, key_prefix):
    """One accepted payload first, so "changes nothing" is checked against live state.

    The seed uses the same token, customer and content as the bad requests,
    so a partial write of a rejected request would land on existing keys.
    """
    resp = post_raw(client, encode(payload()))
    assert resp.status_code == 200, resp.get_data()
    before = keyspace(redis, key_prefix)
    assert before, "the seed payload wrote nothing"
    return before


# --- accepted payloads -----------------------------------------------------------


def test_example_payload_is_accepted_and_counted(client, redis, config, clock):
    resp = post_raw(client, encode(EXAMPLE))

    assert_accepted(resp)
    k = window(config, clock)
    assert live_rows(redis, config, k) == {("customer1", "content1"): (321123, 560065, 1, 1)}

    # What the flusher will read: freeze the example's shard, read the snapshot.
    shard = k_.shard_of(EXAMPLE["token"], config.shards)
    snap = Snapshot(k=k, shard=shard, flush_id="test-flush")
    assert snapshots.freeze(redis, Scripts(redis), config, snap) == 1
    rows = [row for batch in snapshots.read_snapshot(redis, config, snap) for row in batch]
    assert rows == [Row("customer1", "content1", cdn=321123, p2p=560065, sessions=1, payloads=1)]


def test_payloads_add_up_per_customer_and_content(client, redis, config, clock):
    later = {**EXAMPLE, "p2p": 1, "cdn": 2, "sessionDuration": 150000}
    other = {**EXAMPLE, "token": "other", "customer": "customer2", "p2p": 7, "cdn": 0}
    for body in (EXAMPLE, later, other):
        assert_accepted(post_raw(client, encode(body)))

    assert live_rows(redis, config, window(config, clock)) == {
        ("customer1", "content1"): (321125, 560066, 1, 2),
        ("customer2", "content1"): (0, 7, 1, 1),
    }


def test_payload_belongs_to_the_window_of_its_reception_time(client, redis, config, clock):
    length = config.window_seconds
    k = window(config, clock)
    end = (k + 1) * length
    clock.now = end - 0.001  # the last instant of window k
    assert_accepted(post_raw(client, with_fields(token="a", cdn=10, p2p=0)))
    clock.now = end  # half-open: the first instant of window k + 1
    assert_accepted(post_raw(client, with_fields(token="b", cdn=20, p2p=0)))

    assert live_rows(redis, config, k) == {("acme", "movie-1"): (10, 0, 1, 1)}
    assert live_rows(redis, config, k + 1) == {("acme", "movie-1"): (20, 0, 1, 1)}


ACCEPTED_EDGES = [
    pytest.param({"cdn": 0, "p2p": 0}, id="zero-bytes"),
    pytest.param({"cdn": 10**12}, id="cdn-max"),
    pytest.param({"p2p": 10**12}, id="p2p-max"),
    pytest.param({"cdn": 10**12, "p2p": 10**12}, id="both-max"),
    pytest.param({"timespan": 0}, id="timespan-zero"),
    pytest.param({"timespan": 2**53 - 1}, id="timespan-max"),
    pytest.param({"sessionDuration": 0}, id="duration-zero"),
    pytest.param({"sessionDuration": 299_999}, id="duration-just-short"),
    pytest.param({"sessionDuration": 300_000}, id="duration-window-long"),
    pytest.param({"sessionDuration": 2**53 - 1}, id="duration-max"),
    pytest.param({"token": "t" * 128}, id="token-128"),
    pytest.param({"customer": "c" * 256}, id="customer-256"),
    pytest.param({"content": "x" * 256}, id="content-256"),
    pytest.param({"token": "t"}, id="token-1-char"),
    pytest.param({"customer": "📺" * 256}, id="customer-256-astral-chars"),
    pytest.param({"content": "日本語" * 85}, id="content-255-cjk"),
    pytest.param({"customer": "قناة", "content": "ערוץ"}, id="rtl"),
    pytest.param({"customer": "e\u0301", "content": "a:b:c"}, id="combining-and-colons"),
    pytest.param({"customer": " spaced ", "content": 'quote " comma , \\'}, id="csv-specials"),
]


@pytest.mark.parametrize("changes", ACCEPTED_EDGES)
def test_edge_values_are_accepted_and_counted_exactly(client, redis, config, clock, changes):
    body = payload(**changes)

    resp = post_raw(client, json.dumps(body, ensure_ascii=False).encode("utf-8"))

    assert_accepted(resp)
    assert live_rows(redis, config, window(config, clock)) == {
        (body["customer"], body["content"]): (
            body["cdn"],
            body["p2p"],
            starts_session(body, config),
            1,
        )
    }


def test_escaped_surrogate_pair_is_one_astral_character(client, redis, config, clock):
    data = with_raw("customer", '"tv-\\ud83d\\udcfa"')

    assert_accepted(post_raw(client, data))
    assert live_rows(redis, config, window(config, clock)) == {
        ("tv-📺", "movie-1"): (250, 100, 1, 1)
    }


def test_unknown_extra_fields_are_ignored(client, redis, config, clock):
    body = {
        **EXAMPLE,
        "firmware": "9.1.0",
        "metrics": {"rebuffer": [1, 2, {"x": None}], "bitrate": 4.5e6},
        "Token": "other-token",  # names are case-sensitive: not the token
        "CDN": 999,
        "sessionduration": -1,
        "": None,
        "flag": True,
        "big": 10**30,
    }

    resp = post_raw(client, encode(body))

    assert_accepted(resp)
    assert live_rows(redis, config, window(config, clock)) == {
        ("customer1", "content1"): (321123, 560065, 1, 1)
    }


def test_5000_digit_integer_in_an_extra_field_is_ignored(client, redis, config, clock):
    text = json.dumps(payload())[:-1] + ', "future": ' + "9" * 5000 + "}"

    resp = post_raw(client, text.encode("ascii"))

    assert_accepted(resp)
    assert live_rows(redis, config, window(config, clock)) == {
        ("acme", "movie-1"): (250, 100, 1, 1)
    }


# --- rejected payloads: a field at fault ------------------------------------------

WRONG_FOR_INT = [
    ("true", True),
    ("false", False),
    ("float", 1.5),
    ("integral-float", 30000.0),
    ("zero-float", 0.0),
    ("negative-zero-float", -0.0),
    ("string", "30000"),
    ("empty-string", ""),
    ("null", None),
    ("object", {"value": 1}),
    ("empty-object", {}),
    ("array", [1]),
    ("empty-array", []),
]
WRONG_FOR_STR = [
    ("true", True),
    ("false", False),
    ("int", 1),
    ("zero", 0),
    ("float", 1.5),
    ("null", None),
    ("object", {"name": "acme"}),
    ("empty-object", {}),
    ("array", ["acme"]),
    ("empty-array", []),
]
CONTROL_CHARS = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]
LONE_SURROGATES = ['"\\ud800"', '"\\udfff"', '"a\\udbffz"', '"\\ude00\\ud83d"', '"ok\\ud83d"']


def _field_cases() -> Iterator[Any]:
    for f in FIELDS:
        yield pytest.param(without(f), f, id=f"missing-{f}")
    for f in INT_FIELDS:
        for name, value in WRONG_FOR_INT:
            yield pytest.param(with_fields(**{f: value}), f, id=f"{f}-{name}")
        for value in (-1, -(2**63), 2**63, 2**64, INT_LIMITS[f] + 1):
            yield pytest.param(with_fields(**{f: value}), f, id=f"{f}-out-of-range-{value}")
        yield pytest.param(with_raw(f, "9" * 5000), f, id=f"{f}-5000-digits")
        yield pytest.param(with_raw(f, "-" + "9" * 5000), f, id=f"{f}-minus-5000-digits")
        yield pytest.param(with_raw(f, "1" + "0" * 5000 + ".0"), f, id=f"{f}-5000-digit-float")
        yield pytest.param(with_raw(f, "1e999999"), f, id=f"{f}-float-overflow")
        yield pytest.param(with_raw(f, "3e4"), f, id=f"{f}-exponent")
    for f in STR_FIELDS:
        for name, value in WRONG_FOR_STR:
            yield pytest.param(with_fields(**{f: value}), f, id=f"{f}-{name}")
        yield pytest.param(with_fields(**{f: ""}), f, id=f"{f}-empty")
        too_long = STR_LIMITS[f] + 1
        yield pytest.param(with_fields(**{f: "x" * too_long}), f, id=f"{f}-too-long")
        yield pytest.param(with_fields(**{f: "é" * too_long}), f, id=f"{f}-too-long-2-byte")
        yield pytest.param(with_fields(**{f: "📺" * too_long}), f, id=f"{f}-too-long-astral")
        for ch in CONTROL_CHARS:
            value = f"ab{ch}cd"
            yield pytest.param(with_fields(**{f: value}), f, id=f"{f}-control-U+{ord(ch):04X}")
        yield pytest.param(with_fields(**{f: "\x00"}), f, id=f"{f}-only-nul")
        # JSON allows DEL and the C1 controls unescaped: the schema must catch them.
        for ch in ("\x7f", "\x85"):
            raw = json.dumps(base(**{f: f"ab{ch}cd"}), ensure_ascii=False).encode("utf-8")
            yield pytest.param(raw, f, id=f"{f}-raw-control-U+{ord(ch):04X}")
        for i, raw in enumerate(LONE_SURROGATES):
            yield pytest.param(with_raw(f, raw), f, id=f"{f}-lone-surrogate-{i}")


@pytest.mark.parametrize(("data", "field"), list(_field_cases()))
def test_bad_field_is_named_and_changes_nothing(client, redis, key_prefix, seeded, data, field):
    resp = post_raw(client, data)

    assert_error(resp, 400, "invalid_payload", fields={field})
    assert_unchanged(redis, key_prefix, seeded)


def test_every_missing_field_is_named(client, redis, key_prefix, seeded):
    resp = post_raw(client, b"{}")

    assert_error(resp, 400, "invalid_payload", fields=set(FIELDS))
    assert_unchanged(redis, key_prefix, seeded)


def test_several_bad_fields_are_all_named(client, redis, key_prefix, seeded):
    data = with_fields(token="", cdn=-1, p2p=1.5, timespan=None)

    resp = post_raw(client, data)

    assert_error(resp, 400, "invalid_payload", fields={"token", "cdn", "p2p", "timespan"})
    assert_unchanged(redis, key_prefix, seeded)


# --- rejected bodies: not a payload at all ----------------------------------------

VALID = encode(base())


def _body_cases() -> Iterator[Any]:
    # Invalid JSON.
    for name, data in [
        ("open-brace", b"{"),
        ("close-brace", b"}"),
        ("unquoted-keys", b"{token: 1}"),
        ("single-quotes", b"{'token': 'x'}"),
        ("trailing-comma", VALID[:-1] + b", }"),
        ("trailing-garbage", VALID + b"x"),
        ("two-objects", VALID + VALID),
        ("bare-word", b"nul"),
        ("comment", b"// payload\n" + VALID),
        ("raw-nul-in-string", VALID.replace(b'"acme"', b'"ac\x00me"')),
        ("raw-newline-in-string", VALID.replace(b'"acme"', b'"ac\nme"')),
        ("raw-tab-in-string", VALID.replace(b'"acme"', b'"ac\tme"')),
        ("bad-escape", VALID.replace(b'"acme"', b'"ac\\qme"')),
        ("short-unicode-escape", VALID.replace(b'"acme"', b'"ac\\u12"')),
        ("hex-number", with_raw("cdn", "0x10")),
        ("leading-zero", with_raw("cdn", "0100")),
        ("plus-sign", with_raw("cdn", "+1")),
        ("bare-dot", with_raw("cdn", ".5")),
        ("missing-value", with_raw("cdn", "")),
    ]:
        yield pytest.param(data, id=f"invalid-json-{name}")
    # NaN and the infinities are not JSON, wherever they appear.
    for raw in ("NaN", "Infinity", "-Infinity"):
        yield pytest.param(with_raw("cdn", raw), id=f"cdn-{raw}")
        yield pytest.param(VALID[:-1] + b', "extra": ' + raw.encode() + b"}", id=f"extra-{raw}")
    # Empty bodies.
    for name, data in [("empty", b""), ("space", b" "), ("whitespace", b"\r\n\t ")]:
        yield pytest.param(data, id=f"empty-body-{name}")
    # Valid JSON that is not an object.
    for name, data in [
        ("empty-array", b"[]"),
        ("array-of-payload", encode([payload()])),
        ("string", b'"payload"'),
        ("number", b"42"),
        ("negative-float", b"-1.5"),
        ("null", b"null"),
        ("true", b"true"),
        ("false", b"false"),
    ]:
        yield pytest.param(data, id=f"not-an-object-{name}")
    # Bytes that are not UTF-8.
    for name, raw in [
        ("ff", b"\xff"),
        ("overlong-slash", b"\xc0\xaf"),
        ("truncated-sequence", b"\xe6\x97"),
        ("latin-1", b"caf\xe9"),
        ("encoded-surrogate", b"\xed\xa0\x80"),
        ("cesu-8-pair", b"\xed\xa0\xbd\xed\xb3\xba"),
        ("above-u10ffff", b"\xf4\x90\x80\x80"),
    ]:
        yield pytest.param(VALID.replace(b'"acme"', b'"' + raw + b'"'), id=f"utf8-customer-{name}")
        extra = VALID[:-1] + b', "extra": "' + raw + b'"}'
        yield pytest.param(extra, id=f"utf8-extra-field-{name}")
    yield pytest.param(VALID[:-1] + b', "\xff": 1}', id="utf8-key")
    # Nesting deep enough to exhaust a recursive parser.
    deep = 100_000
    yield pytest.param(b"[" * deep, id="deep-open-arrays")
    yield pytest.param(b'{"a":' * deep, id="deep-open-objects")
    yield pytest.param(b"[" * deep + b"]" * deep, id="deep-closed-arrays")
    nested = b"[" * deep + b"]" * deep
    yield pytest.param(with_raw("cdn", nested.decode()), id="deep-in-cdn")
    yield pytest.param(VALID[:-1] + b', "extra": ' + nested + b"}", id="deep-in-extra-field")


@pytest.mark.parametrize("data", list(_body_cases()))
def test_bad_body_gets_400_json_and_changes_nothing(client, redis, key_prefix, seeded, data):
    resp = post_raw(client, data)

    assert_error(resp, 400)
    assert_unchanged(redis, key_prefix, seeded)


def test_every_truncation_of_a_payload_is_rejected(client, redis, key_prefix, seeded):
    text = json.dumps(base(customer="acmé 📺"), ensure_ascii=False).encode("utf-8")
    for cut in range(len(text)):
        resp = post_raw(client, text[:cut])
        assert resp.status_code == 400, (cut, text[:cut], resp.get_data())
        error_body(resp)
    assert_unchanged(redis, key_prefix, seeded)


DUPLICATES = [
    pytest.param("token", b'"token": "a", "token": "b"', id="token"),
    # A parser differential: another JSON reader would bill 1 TB here.
    pytest.param("cdn", b'"cdn": 1000000000000, "cdn": 5', id="cdn"),
]


@pytest.mark.parametrize(("field", "pair"), DUPLICATES)
def test_duplicate_keys_are_rejected_naming_the_field(
    client, redis, key_prefix, seeded, field, pair
):
    body = base()
    del body[field]
    data = b"{" + pair + b", " + encode(body)[1:]

    resp = post_raw(client, data)

    error = assert_error(resp, 400)
    assert field in error.get("fields", {}) or field in error["message"], error
    assert_unchanged(redis, key_prefix, seeded)


# --- body size --------------------------------------------------------------------


def padded(size: int, **changes: Any) -> bytes:
    """A payload of exactly ``size`` bytes, padded in an unknown field."""
    empty = len(encode({**base(**changes), "pad": ""}))
    data = encode({**base(**changes), "pad": "x" * (size - empty)})
    assert len(data) == size
    return data


def test_body_of_exactly_the_limit_is_accepted(client, redis, config, clock):
    resp = post_raw(client, padded(config.max_body_bytes))

    assert_accepted(resp)
    assert live_rows(redis, config, window(config, clock)) == {
        ("acme", "movie-1"): (250, 100, 1, 1)
    }


@pytest.mark.parametrize("size", [None, 20 * 1024 * 1024], ids=["limit+1", "20MB"])
def test_body_over_the_limit_gets_413_and_changes_nothing(
    client, redis, key_prefix, config, seeded, size
):
    data = padded(size or config.max_body_bytes + 1)

    resp = post_raw(client, data)

    assert_error(resp, 413)
    assert_unchanged(redis, key_prefix, seeded)


def test_invalid_json_just_under_the_limit_gets_400(client, redis, key_prefix, config, seeded):
    data = padded(config.max_body_bytes)[:-1]  # one byte short: the closing brace

    resp = post_raw(client, data)

    assert_error(resp, 400, "invalid_json")
    assert_unchanged(redis, key_prefix, seeded)


def test_too_long_name_just_under_the_limit_names_the_field(
    client, redis, key_prefix, config, seeded
):
    size = config.max_body_bytes - 1
    data = encode(base(customer="c"))
    data = encode(base(customer="c" * (size - len(data) + 1)))
    assert len(data) == size

    resp = post_raw(client, data)

    assert_error(resp, 400, "invalid_payload", fields={"customer"})
    assert_unchanged(redis, key_prefix, seeded)


# --- other routes -----------------------------------------------------------------


# GET /stats is the history query (app/api/query.py); the others are not routed.
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_on_stats_get_405_json(client, redis, key_prefix, seeded, method):
    resp = client.open("/stats", method=method, data=VALID, content_type="application/json")

    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    assert_unchanged(redis, key_prefix, seeded)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ["/", "/nope", "/stats/", "/stats/extra", "/STATS"])
def test_unknown_path_gets_404_json(client, redis, key_prefix, seeded, method, path):
    resp = client.open(path, method=method, data=VALID, content_type="application/json")

    assert_error(resp, 404, "not_found")
    assert_unchanged(redis, key_prefix, seeded)


# --- Redis down -------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(timeout=5)
    server.close()
    for conn in accepted:
        conn.close()


@pytest.mark.parametrize("down", ["refused", "hung"])
def test_redis_down_answers_503_json_quickly(request, config, clock, down):
    if down == "refused":
        url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    else:
        url = request.getfixturevalue("silent_server")
    app = create_app(replace(config, redis_url=url), clock=clock)
    client = app.test_client()

    for _ in range(2):  # the second request tries again on a fresh connection
        started = time.monotonic()
        resp = post_raw(client, encode(EXAMPLE))
        elapsed = time.monotonic() - started

        assert_error(resp, 503, "unavailable")
        assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
        assert elapsed < 3.0, f"took {elapsed:.2f} s with Redis {down}"

    # Validation does not need Redis: a bad payload is still the client's fault.
    assert_error(post_raw(client, with_fields(cdn=-1)), 400, "invalid_payload", fields={"cdn"})


# --- properties -------------------------------------------------------------------


def spec_errors(body: dict[str, Any]) -> set[str]:
    """The fields SPEC section 1 finds at fault in a JSON object."""
    bad = set()
    for f, limit in STR_LIMITS.items():
        v = body.get(f)
        if not (
            isinstance(v, str)
            and 1 <= len(v) <= limit
            and not any(unicodedata.category(ch) in FORBIDDEN_CATEGORIES for ch in v)
        ):
            bad.add(f)
    for f, limit in INT_LIMITS.items():
        v = body.get(f)
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit):
            bad.add(f)
    return bad


def non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    return False


def check_request(
    client, redis, config, clock, key_prefix, accepted: set, value: Any, ascii_only: bool
) -> None:
    """POST ``value`` as JSON; check the answer against the SPEC and Redis against the answer.

    ``accepted`` holds the (token, sessionDuration) of every payload counted so
    far: the only payloads the service may answer as retries (duplicates).
    """
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates travel as \uXXXX escapes
        data = json.dumps(value).encode("ascii")
    k = window(config, clock)
    before = keyspace(redis, key_prefix)
    valid = isinstance(value, dict) and not non_finite(value) and not spec_errors(value)
    old = counters(redis, config, k, value) if valid else (0, 0, 0, 0)

    resp = post_raw(client, data)

    assert resp.status_code < 500, resp.get_data()[:500]
    if valid:
        assert resp.status_code == 200, (value, resp.get_data()[:500])
        answer = resp.get_json()
        new = counters(redis, config, k, value)
        delta = tuple(a - b for a, b in zip(new, old, strict=True))
        retry = (value["token"], value["sessionDuration"])
        event("accepted as a retry" if answer.get("duplicates", 0) else "accepted")
        if answer.get("duplicates", 0):
            assert answer == {"accepted": 0, "duplicates": 1}, answer
            assert retry in accepted, "a first payload was taken for a retry"
            assert delta == (0, 0, 0, 0), "a retry was counted"
            return
        assert answer.pop("duplicates", 0) == 0 and answer == {"accepted": 1}, answer
        cdn, p2p, sessions, payloads = delta
        assert (cdn, p2p, payloads) == (value["cdn"], value["p2p"], 1)
        assert sessions in ((0, 1) if starts_session(value, config) else (0,))
        accepted.add(retry)
        return
    body = assert_error(resp, 400)
    event(f"rejected: {body['error']}")
    if non_finite(value):
        assert body["error"] == "invalid_json", body
    elif isinstance(value, dict):
        assert body["error"] == "invalid_payload", body
        assert set(body["fields"]) == spec_errors(value), (value, body)
    assert_unchanged(redis, key_prefix, before)


CHARS = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),
    st.sampled_from(["\x00", "\x1f", "\x7f", "\x85", "\u2028", "\u2029", ":", "\ufeff", "📺"]),
)
TEXT = st.text(CHARS, max_size=12)
KEYS = st.one_of(st.sampled_from(FIELDS), TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=2**64),
    st.floats(),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=12,
)


def _text_values(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(CHARS, min_size=0, max_size=limit + 2),
        st.sampled_from(["", "x" * limit, "x" * (limit + 1), "📺" * limit, "a:b", "a\x00b"]),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
    )


def _int_values(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(min_value=0, max_value=limit),
        st.sampled_from([-1, 0, 1, limit, limit + 1, 2**63, True, False, 1.0, "1"]),
        st.integers(),
    )


FIELD_VALUES = {
    **{f: _text_values(limit) for f, limit in STR_LIMITS.items()},
    **{f: _int_values(limit) for f, limit in INT_LIMITS.items()},
}


@st.composite
def mutated_payloads(draw) -> dict[str, Any]:
    """A valid payload with 0..3 of its fields replaced, retyped or deleted, plus extras."""
    body = payload(
        token=draw(st.sampled_from(["t1", "t2", "t3", "t4", "t5"])),
        sessionDuration=draw(st.integers(min_value=0, max_value=10**6)),
    )
    n = draw(st.integers(min_value=0, max_value=3))
    for f in draw(st.lists(st.sampled_from(FIELDS), min_size=n, max_size=n, unique=True)):
        action = draw(st.sampled_from(["replace", "replace", "retype", "delete"]))
        if action == "replace":
            body[f] = draw(FIELD_VALUES[f])
        elif action == "retype":
            body[f] = draw(JSON_VALUES)
        else:
            del body[f]
    for key, value in draw(st.dictionaries(TEXT, JSON_VALUES, max_size=3)).items():
        if key not in FIELDS:
            body[key] = value
    return body


PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture
def accepted() -> set:
    """(token, sessionDuration) of the payloads counted so far, across examples."""
    return set()


@PROPERTY_SETTINGS
@given(value=JSON_VALUES, ascii_only=st.booleans())
def test_property_arbitrary_json_values(
    client, redis, config, clock, key_prefix, accepted, value, ascii_only
):
    check_request(client, redis, config, clock, key_prefix, accepted, value, ascii_only)


@PROPERTY_SETTINGS
@given(body=mutated_payloads(), ascii_only=st.booleans())
def test_property_mutated_payloads(
    client, redis, config, clock, key_prefix, accepted, body, ascii_only
):
    check_request(client, redis, config, clock, key_prefix, accepted, body, ascii_only)


@st.composite
def mutated_bytes(draw) -> bytes:
    data = bytearray(json.dumps(payload(customer="acmé 📺"), ensure_ascii=False).encode("utf-8"))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=4))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@PROPERTY_SETTINGS
@given(data=mutated_bytes())
def test_property_mutated_bytes(client, redis, config, clock, key_prefix, data):
    before = keyspace(redis, key_prefix)

    resp = post_raw(client, data)

    assert resp.status_code < 500, resp.get_data()[:500]
    event(f"status {resp.status_code}")
    if resp.status_code == 200:
        answer = resp.get_json()
        assert answer in (
            {"accepted": 1},
            {"accepted": 1, "duplicates": 0},
            {"accepted": 0, "duplicates": 1},
        ), answer
        # Only a body that is valid UTF-8 JSON and a valid payload may be accepted.
        value = json.loads(data.decode("utf-8"))
        assert isinstance(value, dict) and not spec_errors(value), value
        return
    assert_error(resp, 400)
    assert_unchanged(redis, key_prefix, before)

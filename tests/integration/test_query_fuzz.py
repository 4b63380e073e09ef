"""Every query parameter and cursor of GET /stats and GET /stats/live, however
crafted, answers 200 or a 4xx JSON error -- never a 5xx (hypothesis, against a
real PostgreSQL and Redis); and rollups past bigint are exact.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import payload, write_rows

one_shard = pytest.mark.parametrize("shards", [1], ids=["1shard"])

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

HISTORY = ("customer", "content", "from", "to", "order", "limit", "cursor", "group_by", "bucket")
LIVE = ("customer", "content", "limit")
BIG = 2**63 - 1
BASE = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def rows(pool) -> list[tuple]:
    data = [
        (BASE + timedelta(minutes=5 * i), f"cu{i % 3}", f"co{i % 4}", 1000 + i, 7 * i, i % 2, 3)
        for i in range(40)
    ]
    write_rows(pool, data)  # the write path: partitions and rollups too
    return data


def query_string(pairs: list[tuple[str, str | bytes]]) -> str:
    """Pairs as a raw query string: repeated names, any text (lone surrogates as
    the bytes a client would send), raw invalid UTF-8."""
    parts = []
    for name, value in pairs:
        if isinstance(value, bytes):
            encoded = "".join(f"%{b:02X}" for b in value)
        else:
            encoded = quote(value, safe="", errors="surrogatepass")
        parts.append(f"{quote(name, safe='', errors='surrogatepass')}={encoded}")
    return "&".join(parts)


def check(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    if response.status_code >= 400:
        assert 400 <= response.status_code < 500
        assert isinstance(body["error"], str) and isinstance(body["message"], str)
    else:
        assert isinstance(body["rows"], list)


# --- strategies ------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda m: f"{'-' if m < 0 else '+'}{abs(m) // 60:02d}:{abs(m) % 60:02d}"
)
EXTREME_DATES = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00", "9999-12-31T23:59:59", "0001-01-01", "9999-12-31"]),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)).map(
        lambda d: d.isoformat()
    ),
)
DATES = st.one_of(
    st.builds(
        lambda d, o: d + o, EXTREME_DATES, st.sampled_from(["", "Z", "z", " 02:00"]) | OFFSETS
    ),
    ANY_TEXT,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
CURSOR_PARTS = st.tuples(
    DATES | JSON, ANY_TEXT | JSON, ANY_TEXT | JSON, st.sampled_from([None, "customer"]) | JSON, JSON
).map(list)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _json(value: Any) -> bytes:
    # ensure_ascii: lone surrogates travel as \\ud800 escapes, as a client may send them.
    return json.dumps(value).encode()


CURSORS = st.one_of(
    CURSOR_PARTS.map(lambda v: b64(_json(v))),
    JSON.map(lambda v: b64(_json(v))),
    st.binary(max_size=300).map(b64),
    st.integers(1, 5000).map(lambda n: b64(b"[" * n + b"]" * n)),
    st.integers(1, 5000).map(lambda n: b64(b'{"a":' * n + b"1" + b"}" * n)),
    ANY_TEXT,
)
LIMITS = st.one_of(st.integers(-5, 2000).map(str), ANY_TEXT)


def values_for(name: str):
    return {
        "from": DATES,
        "to": DATES,
        "cursor": CURSORS,
        "limit": LIMITS,
        "order": st.sampled_from(["asc", "desc"]) | ANY_TEXT,
        "group_by": st.sampled_from(["customer", "content", "customer,content"]) | ANY_TEXT,
        "bucket": st.sampled_from(["5m", "1h", "1d"]) | ANY_TEXT,
    }.get(name, ANY_TEXT | st.sampled_from(["cu1", "co2"]))


def params(names: tuple[str, ...]):
    pair = st.sampled_from(names).flatmap(
        lambda n: st.tuples(st.just(n), values_for(n) | st.binary(max_size=8))
    )
    return st.lists(pair | st.tuples(ANY_TEXT, ANY_TEXT), max_size=7)


# --- the fuzz ------------------------------------------------------------------------------


@one_shard
@FUZZ
@given(pairs=params(HISTORY))
def test_history_parameters_never_answer_5xx(client, rows, pairs):
    check(client.get("/stats", query_string=query_string(pairs)))


@one_shard
@FUZZ
@given(cursor=CURSORS, extra=params(("group_by", "bucket", "order", "limit")))
def test_history_cursors_never_answer_5xx(client, rows, cursor, extra):
    check(client.get("/stats", query_string=query_string([("cursor", cursor), *extra])))


@one_shard
@FUZZ
@given(parts=CURSOR_PARTS, group=st.sampled_from([None, "customer"]))
def test_cursors_shaped_like_ours_never_answer_5xx(client, rows, parts, group):
    pairs = [("cursor", b64(_json(parts)))] + ([("group_by", group)] if group else [])
    check(client.get("/stats", query_string=query_string(pairs)))


@one_shard
@FUZZ
@given(pairs=params(LIVE))
def test_live_parameters_never_answer_5xx(client, pairs):
    client.post("/stats", json=payload())
    check(client.get("/stats/live", query_string=query_string(pairs)))


def _cursor(*parts: Any) -> str:
    return b64(json.dumps(list(parts)).encode())


@one_shard
@pytest.mark.parametrize(
    "pairs",
    [
        [("from", "9999-12-31T23:59:59-23:59")],
        [("to", "9999-12-31T23:59:59-00:01")],
        [("from", "0001-01-01T00:00:00+01:00")],
        [("from", "0001-01-01T00:00:00 01:00")],
        [("from", "0001-01-01T00:00:00Z"), ("to", "9999-12-31T23:59:59Z")],
        [("from", "9999-12-31T23:59:59+23:59"), ("order", "desc")],
        [("cursor", _cursor("2026-11-26T10:00:00+00:00", "a\x00b", "c", None, None))],
        [("cursor", _cursor("2026-11-26T10:00:00+00:00", "\ud800", "c", None, None))],
        [("cursor", _cursor("2026-11-26T10:00:00\x00", "a", "c", None, None))],
        [("cursor", _cursor("9999-12-31T23:59:59-23:59", "a", "c", None, None))],
        [("cursor", _cursor("0001-01-01T00:00:00+01:00", "a", "c", None, None))],
        [("cursor", b64(b"[" * 3000 + b"]" * 3000))],
        [("cursor", b64(b"\xff\xfe\x00"))],
        [("cursor", _cursor({"a": 1}, "a", "c", None, None))],
        [("cursor", "x" * 100_000)],
        [("customer", "a\x00")],
        [("customer", "\ud800")],
        [("customer", "a"), ("customer", "b"), ("limit", "1"), ("limit", "x")],
        [("limit", "1001")],
        [("bucket", "1h"), ("group_by", "customer"), ("from", "0001-01-01T00:00:00Z")],
    ],
)
def test_reported_crafted_values_answer_4xx_or_200(client, rows, pairs):
    response = client.get("/stats", query_string=query_string(pairs))
    check(response)


@one_shard
@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=0", 400),
        ("limit=1001", 400),
        ("limit=abc", 400),
        ("limit=", 400),
        ("limit=1000", 200),
    ],
)
def test_live_limit_is_1_to_1000(client, query, status):
    response = client.get(f"/stats/live?{query}")
    assert response.status_code == status
    check(response)


# --- rollups past bigint ------------------------------------------------------------------


@one_shard
def test_rollups_past_bigint_are_exact_json_integers(client, pool):
    data = [
        (BASE + timedelta(minutes=5 * i), "big", f"content-{i}", BIG, BIG - i, BIG, 1)
        for i in range(6)
    ]
    write_rows(pool, data)
    for query in ("bucket=1h&group_by=customer", "bucket=1d&group_by=customer"):
        response = client.get(f"/stats?{query}")
        assert response.status_code == 200, (query, response.get_json())
        [row] = response.get_json()["rows"]
        assert row["cdn"] == 6 * BIG and isinstance(row["cdn"], int), query
        assert row["p2p"] == 6 * BIG - 15
        assert row["sessions"] == 6 * BIG
        assert row["payloads"] == 6
        assert row["p2p_share"] == round((6 * BIG - 15) / (12 * BIG - 15), 6)
        # The exact digits are in the JSON text, not a float's.
        assert str(6 * BIG) in response.get_data(as_text=True)
    # Pages of a rollup past bigint follow their cursor like any other.
    first = client.get("/stats?group_by=content&limit=4").get_json()
    second = client.get(f"/stats?group_by=content&limit=4&cursor={first['next']}").get_json()
    assert [r["cdn"] for r in first["rows"] + second["rows"]] == [BIG] * 6
    assert second["next"] is None

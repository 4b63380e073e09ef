"""POST /stats through the Flask test client on a real Redis: how decisions are answered.

Which bodies are valid is decided in ``tests/unit/test_validation.py``; here
each kind of decision is checked as an answer: an accepted payload answers
200 and is counted exactly as the reference model says, in its window's live
counters (read through ``payload_stats.buffer``); a refused request answers
a 4xx JSON error ``{"error": ..., "message": ..., ...}`` naming the field at
fault, and leaves the test's whole Redis keyspace exactly as it was (DUMP
and TTL of every key under the test's prefix, before and after). Nothing a
client sends may produce a 5xx.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from payload_stats.buffer import counters as counter_fields
from payload_stats.buffer import keys as k_
from payload_stats.buffer import snapshots
from payload_stats.buffer.keys import Keys
from payload_stats.buffer.scripts import Scripts
from payload_stats.buffer.snapshots import Row as SnapshotRow
from payload_stats.buffer.snapshots import Snapshot
from payload_stats.ingest.body import parse_json
from payload_stats.ingest.schema import PayloadSchema, load_payloads
from payload_stats.web.app import create_app
from payload_stats.web.errors import InvalidJSON
from payload_stats.windows import window_index
from tests.conftest import payload
from tests.support.http import assert_error
from tests.support.model import Model, Row, counted_row
from tests.support.store import assert_unchanged, keyspace, window_counters

FIELDS = ("token", "customer", "content", "timespan", "p2p", "cdn", "sessionDuration")

README_PAYLOAD = {
    "token": "8c7e4d7a-4b0e-4f5e-9d55-0b8f1c1f2a10",
    "customer": "acme-tv",
    "content": "live/channel-1",
    "timespan": 30000,
    "p2p": 5242880,
    "cdn": 1048576,
    "sessionDuration": 30000,
}


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def base(**changes: Any) -> dict[str, Any]:
    """The payload bad requests are made from: the seed's token, customer and
    content (see ``seeded``), another sessionDuration (so it is no retry)."""
    return payload(**{"sessionDuration": 4_200, **changes})


def post_raw(client, data: bytes, content_type: str = "application/json"):
    return client.post("/stats", data=data, content_type=content_type)


@pytest.fixture
def model(config) -> Model:
    return Model.of(config)


@pytest.fixture
def send(client, clock, model):
    """send(body or raw bytes): POST it; it must answer what the model says (200)."""

    def send(body: dict[str, Any] | bytes, sent: dict[str, Any] | None = None) -> None:
        data = body if isinstance(body, bytes) else encode(body)
        resp = post_raw(client, data)
        assert resp.status_code == 200, resp.get_data()[:500]
        assert resp.mimetype == "application/json"
        loaded = sent if sent is not None else body
        assert resp.get_json() == model.receive_all(clock.now, [loaded]).body()

    return send


def window(config, clock) -> int:
    return window_index(clock(), config.window_seconds)


def expected_counters(model: Model, k: int, length: int) -> dict[tuple[str, str], Row]:
    end = (k + 1) * length
    return {(cu, co): row for (t, cu, co), row in model.rows().items() if t == end}


@pytest.fixture
def seeded(client, redis, key_prefix):
    """One accepted payload first, so "changes nothing" is checked against live state.

    The seed uses the same token, customer and content as the bad requests,
    so a partial write of a refused request would land on existing keys.
    """
    resp = post_raw(client, encode(payload()))
    assert resp.status_code == 200, resp.get_data()
    before = keyspace(redis, key_prefix)
    assert before, "the seed payload wrote nothing"
    return before


# --- accepted payloads -----------------------------------------------------------


def test_the_readme_payload_is_counted_as_the_flusher_reads_it(send, redis, config, clock, model):
    send(README_PAYLOAD)

    k = window(config, clock)
    assert window_counters(redis, config, k) == {
        ("acme-tv", "live/channel-1"): Row(1048576, 5242880, 1, 1, 30_000)
    }
    assert window_counters(redis, config, k) == expected_counters(model, k, config.window_seconds)
    # What the flusher will read: freeze the payload's shard, read the snapshot.
    shard = k_.shard_of(README_PAYLOAD["token"], config.shards)
    snap = Snapshot(k=k, shard=shard, flush_id="test-flush")
    assert snapshots.freeze(redis, Scripts(redis), config, snap) == 1
    rows = [row for batch in snapshots.read_snapshot(redis, config, snap) for row in batch]
    assert rows == [SnapshotRow("acme-tv", "live/channel-1", 1048576, 5242880, 1, 1, 30_000)]


def test_payloads_add_up_per_window_customer_and_content(send, redis, config, clock, model):
    k = window(config, clock)
    end = (k + 1) * config.window_seconds
    send(README_PAYLOAD)
    send({**README_PAYLOAD, "p2p": 1, "cdn": 2, "sessionDuration": 150000})
    send({**README_PAYLOAD, "token": "other", "customer": "c2", "p2p": 7, "cdn": 0})
    clock.now = end - 0.001  # the last instant of window k
    send(base(token="a", cdn=10, p2p=0))
    clock.now = end  # half-open: the first instant of window k + 1
    send(base(token="b", cdn=20, p2p=0))

    length = config.window_seconds
    assert window_counters(redis, config, k) == expected_counters(model, k, length)
    assert window_counters(redis, config, k + 1) == expected_counters(model, k + 1, length)
    assert expected_counters(model, k + 1, length) == {
        ("acme", "movie-1"): Row(20, 0, 1, 1, 30_000)
    }


def test_edge_values_are_counted_exactly(send, redis, config, clock, model):
    """Largest counts and durations, longest names (in characters), names a
    CSV or a separator could confuse, and an escaped surrogate pair."""
    for body in [
        payload(token="max", cdn=10**12, p2p=10**12, sessionDuration=2**53 - 1),
        payload(token="zero", cdn=0, p2p=0, sessionDuration=0, timespan=2**53 - 1),
        payload(token="t" * 128, customer="📺" * 256, content="日本語" * 85),
        payload(token="csv", customer=" spaced ", content='quote " comma , \\'),
        payload(token="sep", customer="e\u0301", content="a:b:c"),
    ]:
        send(body)
    send(
        encode(base(token="esc", customer="__RAW__")).replace(b'"__RAW__"', b'"tv-\\ud83d\\udcfa"'),
        sent=base(token="esc", customer="tv-📺"),
    )

    k = window(config, clock)
    assert window_counters(redis, config, k) == expected_counters(model, k, config.window_seconds)
    assert window_counters(redis, config, k)[("tv-📺", "movie-1")] == Row(250, 100, 1, 1, 30_000)


# --- refused requests --------------------------------------------------------------


def _twice(field: str, first: str) -> bytes:
    return b"{" + f'"{field}": {first}, '.encode() + encode(base())[1:]


def _without(field: str) -> bytes:
    body = base()
    del body[field]
    return encode(body)


# One of each kind of decision (tests/unit/test_validation.py has them all).
REFUSED = [
    pytest.param(_without("cdn"), "invalid_payload", {"cdn"}, id="missing-field"),
    pytest.param(encode(base(p2p=True)), "invalid_payload", {"p2p"}, id="boolean"),
    pytest.param(encode(base(cdn=10**12 + 1)), "invalid_payload", {"cdn"}, id="out-of-range"),
    pytest.param(encode(base(content="a\x00b")), "invalid_payload", {"content"}, id="control"),
    pytest.param(encode(base(token="t" * 129)), "invalid_payload", {"token"}, id="too-long"),
    pytest.param(
        encode(base(customer="__RAW__")).replace(b'"__RAW__"', b'"\\ud800"'),
        "invalid_payload",
        {"customer"},
        id="lone-surrogate",
    ),
    pytest.param(b"{}", "invalid_payload", set(FIELDS), id="every-field-named"),
    pytest.param(
        encode({k: v for k, v in base(token="", cdn=-1, p2p=1.5).items() if k != "timespan"}),
        "invalid_payload",
        {"token", "cdn", "p2p", "timespan"},
        id="several-fields",
    ),
    pytest.param(b"[1, 2]", "invalid_payload", {"_schema"}, id="not-an-object"),
    pytest.param(encode(base())[:-1], "invalid_json", None, id="truncated"),
    pytest.param(b"", "invalid_json", None, id="empty"),
    pytest.param(_twice("cdn", "1000000000000"), "invalid_json", None, id="duplicate-key"),
    pytest.param(
        encode(base(customer="caf\xe9")).replace(b"\xc3\xa9", b"\xe9"),
        "invalid_json",
        None,
        id="latin-1",
    ),
    pytest.param(b"[" * 100_000, "invalid_json", None, id="deep-nesting"),
]


@pytest.mark.parametrize(("data", "code", "fields"), REFUSED)
def test_a_refused_request_answers_400_and_changes_nothing(
    client, redis, key_prefix, seeded, data, code, fields
):
    resp = post_raw(client, data)

    body = assert_error(resp, 400, code, fields=fields)
    if code == "invalid_payload":
        assert all(name in body["message"] for name in fields), body["message"]
    assert_unchanged(redis, key_prefix, seeded)


# --- body size --------------------------------------------------------------------


def padded(size: int, **changes: Any) -> bytes:
    """A payload of exactly ``size`` bytes, padded in an unknown field."""
    empty = len(encode({**base(**changes), "pad": ""}))
    data = encode({**base(**changes), "pad": "x" * (size - empty)})
    assert len(data) == size
    return data


def test_body_of_exactly_the_limit_is_accepted(send, redis, config, clock, model):
    send(padded(config.max_body_bytes), sent=base())

    k = window(config, clock)
    assert window_counters(redis, config, k) == {("acme", "movie-1"): Row(250, 100, 1, 1, 30_000)}


@pytest.mark.parametrize("size", [None, 20 * 1024 * 1024], ids=["limit+1", "20MB"])
def test_body_over_the_limit_gets_413_and_changes_nothing(
    client, redis, key_prefix, config, seeded, size
):
    resp = post_raw(client, padded(size or config.max_body_bytes + 1))

    assert_error(resp, 413, "request_entity_too_large")
    assert_unchanged(redis, key_prefix, seeded)


def test_just_under_the_limit_a_bad_body_is_still_named(client, redis, key_prefix, config, seeded):
    limit = config.max_body_bytes
    assert_error(post_raw(client, padded(limit)[:-1]), 400, "invalid_json")  # no closing brace
    size = limit - 1
    data = encode(base(customer="c"))
    data = encode(base(customer="c" * (size - len(data) + 1)))
    assert len(data) == size
    assert_error(post_raw(client, data), 400, "invalid_payload", fields={"customer"})
    assert_unchanged(redis, key_prefix, seeded)


# --- other routes -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_on_stats_get_405_json(client, redis, key_prefix, seeded, method):
    resp = client.open(
        "/stats", method=method, data=encode(base()), content_type="application/json"
    )

    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    assert_unchanged(redis, key_prefix, seeded)


def test_unknown_paths_get_404_json(client, redis, key_prefix, seeded):
    for path in ("/nope", "/stats/", "/stats/extra", "/STATS"):
        for method in ("GET", "POST"):
            resp = client.open(
                path, method=method, data=encode(base()), content_type="application/json"
            )
            assert_error(resp, 404, "not_found")
    # "/" is the way to the dashboard, for GET only.
    resp = client.get("/")
    assert (resp.status_code, resp.headers["Location"]) == (302, "dashboard")
    resp = client.post("/", data=encode(base()), content_type="application/json")
    assert_error(resp, 405, "method_not_allowed")
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
        resp = post_raw(client, encode(README_PAYLOAD))
        elapsed = time.monotonic() - started

        assert_error(resp, 503, "unavailable")
        assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
        assert elapsed < 3.0, f"took {elapsed:.2f} s with Redis {down}"

    # Validation does not need Redis: a bad payload is still the client's fault.
    assert_error(post_raw(client, encode(base(cdn=-1))), 400, "invalid_payload", fields={"cdn"})


# --- properties: any body is answered as decided, and counted as the model says ----


SCHEMA = PayloadSchema()


def decision(data: bytes) -> tuple[str, Any]:
    """What the service decides for ``data`` (the unit-tested chain), without HTTP."""
    try:
        item = parse_json(data)
    except InvalidJSON:
        return "invalid_json", None
    loaded, errors = load_payloads(SCHEMA, [item])
    return ("accepted", loaded[0]) if loaded else ("invalid_payload", errors["0"])


def counters(redis, config, k: int, body: dict[str, Any]) -> Row:
    """The live counter hash ``body`` adds to."""
    keys = Keys(config.key_prefix)
    shard = k_.shard_of(body["token"], config.shards)
    name = keys.counters(shard, k, k_.encode_ident(body["customer"], body["content"]))
    c = counter_fields.from_fields(redis.hgetall(name))
    return Row(c.cdn, c.p2p, c.sessions, c.payloads, c.watch_ms)


def check_request(client, redis, config, clock, key_prefix, model, data: bytes) -> None:
    """POST ``data``; the answer must map the decision, Redis must follow the model."""
    decided, detail = decision(data)
    k = window(config, clock)
    before = keyspace(redis, key_prefix)
    old = counters(redis, config, k, detail) if decided == "accepted" else Row()

    resp = post_raw(client, data)

    assert resp.status_code < 500, resp.get_data()[:500]
    if decided != "accepted":
        event(decided)
        body = assert_error(resp, 400, decided)
        if decided == "invalid_payload":
            assert body["fields"] == detail
        assert_unchanged(redis, key_prefix, before)
        return
    answer = model.receive(clock.now, detail)
    event("accepted, a duplicate" if answer.duplicate else "accepted, counted")
    assert resp.status_code == 200, resp.get_data()[:500]
    assert resp.get_json() == {"accepted": int(answer.counted), "duplicates": int(answer.duplicate)}
    delta = counters(redis, config, k, detail) - old
    assert delta == (counted_row(detail, answer.starts) if answer.counted else Row())


CHARS = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),
    st.sampled_from(["\x00", "\x1f", "\x7f", "\x85", "\u2028", "\u2029", ":", "\ufeff", "📺"]),
)
TEXT = st.text(CHARS, max_size=12)
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
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), TEXT), children, max_size=4),
    ),
    max_leaves=12,
)


LIMITS = {"token": 128, "customer": 256, "content": 256}
FIELD_VALUES = {
    **{
        f: st.one_of(
            st.text(CHARS, min_size=0, max_size=limit + 2),
            st.sampled_from(["", "x" * limit, "x" * (limit + 1), "📺" * limit, "a:b", "a\x00b"]),
        )
        for f, limit in LIMITS.items()
    },
    **{
        f: st.one_of(
            st.integers(min_value=0, max_value=10**12),
            st.sampled_from([-1, 0, 10**12, 10**12 + 1, 2**53 - 1, 2**53, True, 1.0, "1"]),
        )
        for f in ("timespan", "p2p", "cdn", "sessionDuration")
    },
}


@st.composite
def mutated_payloads(draw) -> dict[str, Any]:
    """A payload of a few tokens and durations (so retries happen) with 0..2 fields
    replaced, retyped or deleted, and maybe unknown fields."""
    body = payload(
        token=draw(st.sampled_from(["t1", "t2", "t3", "t4", "t5"])),
        cdn=draw(st.sampled_from([0, 250, 10**12])),
        p2p=draw(st.sampled_from([0, 100])),
        sessionDuration=draw(st.sampled_from([0, 1_000, 30_000, 299_999, 300_000, 10**6])),
    )
    n = draw(st.sampled_from([0, 0, 1, 1, 2]))
    for f in draw(st.lists(st.sampled_from(FIELDS), min_size=n, max_size=n, unique=True)):
        action = draw(st.sampled_from(["replace", "replace", "retype", "delete"]))
        if action == "replace":
            body[f] = draw(FIELD_VALUES[f])
        elif action == "retype":
            body[f] = draw(JSON_VALUES)
        else:
            del body[f]
    for key, value in draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2)).items():
        if key not in FIELDS:
            body[key] = value
    return body


@st.composite
def bodies(draw) -> bytes:
    """JSON values, mutated payloads, or the bytes of a payload mangled."""
    kind = draw(st.sampled_from([0, 1, 1, 2]))
    if kind < 2:
        value = draw(JSON_VALUES if kind == 0 else mutated_payloads())
        try:
            if draw(st.booleans()):
                return json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates travel as \uXXXX escapes
            pass
        return json.dumps(value).encode("ascii")
    data = bytearray(encode(payload(customer="acmé 📺")))
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


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=bodies())
def test_any_body_is_answered_as_decided_and_counted_as_the_model_says(
    client, redis, config, clock, key_prefix, model, data
):
    check_request(client, redis, config, clock, key_prefix, model, data)

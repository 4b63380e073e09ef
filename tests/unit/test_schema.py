"""PayloadSchema, SPEC section 1 to the letter.

Seven required fields; integers are JSON integers within their bounds;
strings are 1..256 characters (token 1..128) of printable text; unknown
fields are ignored; every error names its field. ``fast_load``, the cheap
pre-check in front of the schema, must never accept what the schema rejects
nor load anything differently.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from payload_stats.ingest.schema import PayloadSchema, fast_load, load_payloads
from tests.conftest import payload

FIELDS = ("token", "customer", "content", "timespan", "p2p", "cdn", "sessionDuration")
STRINGS = ("token", "customer", "content")
BYTE_COUNTERS = ("cdn", "p2p")
DURATIONS = ("timespan", "sessionDuration")
MAX_SAFE = 2**53 - 1
MAX_LENGTH = {"token": 128, "customer": 256, "content": 256}


def load(body: dict) -> dict:
    return PayloadSchema().load(body)


def errors(body: dict) -> dict:
    """The error messages of an invalid body, by field."""
    with pytest.raises(ValidationError) as excinfo:
        load(body)
    return excinfo.value.messages


def test_valid_payload_loads_unchanged() -> None:
    body = payload()

    assert load(body) == body


def test_names_are_kept_as_sent() -> None:
    body = payload(customer=" acme ", content="Movie 1 ", token=" t ")

    assert load(body) == body


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_is_required(field: str) -> None:
    body = payload()
    del body[field]

    assert errors(body) == {field: ["Missing data for required field."]}


def test_an_empty_object_names_all_seven_fields() -> None:
    assert set(errors({})) == set(FIELDS)


# --- integers -------------------------------------------------------------


@pytest.mark.parametrize("field", BYTE_COUNTERS + DURATIONS)
@pytest.mark.parametrize(
    "value",
    [True, False, 1.0, 0.0, 1.5, "1", "0", None, [], {}, [1]],
    ids=repr,
)
def test_integers_must_be_json_integers(field: str, value: object) -> None:
    assert set(errors(payload(**{field: value}))) == {field}


@pytest.mark.parametrize("field", BYTE_COUNTERS)
@pytest.mark.parametrize("value", [0, 1, 10**12])
def test_byte_counters_in_range(field: str, value: int) -> None:
    assert load(payload(**{field: value}))[field] == value


@pytest.mark.parametrize("field", BYTE_COUNTERS)
@pytest.mark.parametrize("value", [-1, 10**12 + 1, MAX_SAFE, 10**64])
def test_byte_counters_out_of_range(field: str, value: int) -> None:
    assert set(errors(payload(**{field: value}))) == {field}


@pytest.mark.parametrize("field", DURATIONS)
@pytest.mark.parametrize("value", [0, 1, 10**12 + 1, MAX_SAFE])
def test_durations_in_range(field: str, value: int) -> None:
    assert load(payload(**{field: value}))[field] == value


@pytest.mark.parametrize("field", DURATIONS)
@pytest.mark.parametrize("value", [-1, MAX_SAFE + 1, 10**64])
def test_durations_out_of_range(field: str, value: int) -> None:
    assert set(errors(payload(**{field: value}))) == {field}


def test_loaded_integers_are_ints() -> None:
    loaded = load(payload(cdn=10**12, timespan=MAX_SAFE))

    for field in BYTE_COUNTERS + DURATIONS:
        assert type(loaded[field]) is int, field


# --- strings --------------------------------------------------------------


@pytest.mark.parametrize("field", STRINGS)
def test_strings_up_to_their_length_are_accepted(field: str) -> None:
    n = MAX_LENGTH[field]

    assert load(payload(**{field: "x"}))[field] == "x"
    assert load(payload(**{field: "x" * n}))[field] == "x" * n


@pytest.mark.parametrize("field", STRINGS)
def test_length_is_counted_in_characters(field: str) -> None:
    n = MAX_LENGTH[field]
    emoji = "\U0001f600" * n  # 4 UTF-8 bytes, 1 character each

    assert load(payload(**{field: emoji}))[field] == emoji
    assert set(errors(payload(**{field: emoji + "\U0001f600"}))) == {field}


@pytest.mark.parametrize("field", STRINGS)
@pytest.mark.parametrize("extra", [1, 100])
def test_strings_over_their_length_are_rejected(field: str, extra: int) -> None:
    assert set(errors(payload(**{field: "x" * (MAX_LENGTH[field] + extra)}))) == {field}


@pytest.mark.parametrize("field", STRINGS)
@pytest.mark.parametrize("value", ["", None, 1, 0, True, ["a"], {"a": 1}], ids=repr)
def test_strings_must_be_non_empty_strings(field: str, value: object) -> None:
    assert set(errors(payload(**{field: value}))) == {field}


CONTROL = [
    "\x00",  # NUL
    "\x01",
    "\t",
    "\n",
    "\r",
    "\x1b",  # ESC
    "\x1f",
    "\x7f",  # DEL
    "\x80",
    "\x85",  # NEL
    "\x9f",
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "\u2028",  # LINE SEPARATOR
    "\u2029",  # PARAGRAPH SEPARATOR
]


@pytest.mark.parametrize("field", STRINGS)
@pytest.mark.parametrize("char", CONTROL, ids=lambda c: f"U+{ord(c):04X}")
def test_control_characters_are_rejected(field: str, char: str) -> None:
    for value in (char, f"ab{char}cd", f"abcd{char}"):
        assert set(errors(payload(**{field: value}))) == {field}, repr(value)


PRINTABLE = [
    "直播频道",  # CJK
    "\U0001f3ac\U0001f600",  # emoji
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # emoji with zero-width joiners
    "עברית",  # RTL
    "مرحبا بالعالم",  # RTL
    "e\u0301\u0327",  # combining marks
    "a b",
    " ",
    "\u00a0nbsp",
    "Ünïcödé",
    "a:b{c}[d]/e\\f'g\"h%i",
]


@pytest.mark.parametrize("field", STRINGS)
@pytest.mark.parametrize("value", PRINTABLE)
def test_other_unicode_is_accepted(field: str, value: str) -> None:
    assert load(payload(**{field: value}))[field] == value


# --- unknown fields and error shape --------------------------------------


def test_unknown_fields_are_ignored_and_dropped() -> None:
    body = payload(firmware="9.1", extra={"nested": [1, 2]}, cdn2=5, Token="other")

    assert load(body) == payload()


def test_unknown_fields_do_not_excuse_invalid_known_ones() -> None:
    assert set(errors(payload(cdn=-1, future_field="x"))) == {"cdn"}


def test_every_invalid_field_is_named() -> None:
    body = payload(token="", customer="a\x00", cdn=True, p2p=1.0, timespan=-1)
    del body["sessionDuration"]

    assert set(errors(body)) == {"token", "customer", "cdn", "p2p", "timespan", "sessionDuration"}


# --- the fast path: fast_load agrees with the schema -----------------------

values = st.one_of(
    st.text(max_size=3),
    st.text(min_size=120, max_size=260),
    st.sampled_from(["x" * 128, "x" * 129, "x" * 256, "x" * 257, "a\x00", "\u2028", " "]),
    st.integers(-2, 3),
    st.sampled_from([10**12, 10**12 + 1, MAX_SAFE, MAX_SAFE + 1]),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
)
bodies = st.fixed_dictionaries(
    {},
    optional={name: values for name in FIELDS} | {"extra": values},
)


def test_fast_load_takes_the_common_payload() -> None:
    assert fast_load(payload()) == payload()
    assert fast_load(payload(firmware="9")) == payload()


@given(bodies)
@settings(max_examples=500)
def test_fast_load_accepts_only_what_the_schema_accepts(body: dict) -> None:
    fast = fast_load(body)

    if fast is not None:
        assert fast == PayloadSchema().load(body)


near_valid = st.dictionaries(st.sampled_from(FIELDS), values, max_size=2).map(
    lambda changes: payload(**changes)
)


@given(near_valid)
@settings(max_examples=500)
def test_fast_load_on_nearly_valid_payloads(body: dict) -> None:
    fast = fast_load(body)

    if fast is not None:
        assert fast == PayloadSchema().load(body)


@pytest.mark.parametrize(
    "body",
    [
        payload(cdn=True),
        payload(cdn=1.0),
        payload(token="x" * 129),
        payload(customer=""),
        payload(content="a\x85b"),
        payload(timespan=MAX_SAFE + 1),
        {k: v for k, v in payload().items() if k != "p2p"},
        [payload()],
        "payload",
    ],
    ids=repr,
)
def test_fast_load_leaves_invalid_bodies_to_the_schema(body: object) -> None:
    assert fast_load(body) is None


def test_load_payloads_keeps_the_valid_and_names_the_invalid_by_index() -> None:
    items = [payload(token="a"), payload(cdn=-1), "x", payload(token="b", extra=1), None]

    loaded, errors = load_payloads(PayloadSchema(), items)

    assert loaded == [payload(token="a"), payload(token="b")]
    assert set(errors) == {"1", "2", "4"}
    assert set(errors["1"]) == {"cdn"}
    assert errors["2"] == {"_schema": ["Expected a JSON object."]}

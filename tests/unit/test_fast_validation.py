"""``fast_load`` agrees with ``PayloadSchema`` (SPEC section 1).

``payload_stats.ingest.schema.fast_load`` is a cheap pre-check in front of marshmallow. It is
only correct if it never accepts what the schema rejects and, when it
accepts, returns exactly what ``PayloadSchema().load`` returns. These
properties drive both with arbitrary JSON values and with mutations of a
valid payload (every field replaced by values around its bounds, by the
wrong JSON type, by strings drawn from every Unicode category, removed, or
joined by extra fields), and check that ``load_payloads`` takes the schema's
accept/reject decision for every item of a batch.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from payload_stats.ingest.schema import PayloadSchema, fast_load, load_payloads
from tests.conftest import payload

SCHEMA = PayloadSchema()

STR_LIMITS = {"token": 128, "customer": 256, "content": 256}
INT_LIMITS = {"timespan": 2**53 - 1, "p2p": 10**12, "cdn": 10**12, "sessionDuration": 2**53 - 1}
FIELDS = (*STR_LIMITS, *INT_LIMITS)

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every general category of the Unicode standard, surrogates (Cs) included:
# hypothesis leaves Cs out unless asked.
ALL_CATEGORIES = (
    "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No",
    "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So",
    "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn",
)  # fmt: skip

# Characters where "printable" is easy to get wrong.
SPECIAL_CHARACTERS = (
    "\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f",  # Cc
    " ", "\xa0", "\u2007", "\u3000",  # Zs: space, NBSP, figure space, ideographic
    "\u2028", "\u2029",  # Zl, Zp
    "\u200b", "\u200d", "\u200e", "\u00ad", "\ufeff", "\U000e0001",  # Cf
    "\ud800", "\udbff", "\udc00", "\udfff",  # Cs: lone surrogates
    "\ue000", "\U000f0000",  # Co: private use
    "\u0378", "\U0010ffff",  # Cn: unassigned
    "\u0301", "é", "直", "😀", "\U0001f3fb",
)  # fmt: skip

# Sequences of several code points that show as one character.
SEQUENCES = ("👩\u200d💻", "🇫🇷", "e\u0301", "👍\U0001f3fd")

characters = st.one_of(
    st.characters(categories=ALL_CATEGORIES),
    st.sampled_from(SPECIAL_CHARACTERS),
)

LENGTHS = (0, 1, 2, 127, 128, 129, 255, 256, 257)


@st.composite
def strings(draw) -> str:
    """Short strings of any characters, or strings around the length limits."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        pieces = st.one_of(characters, st.sampled_from(SEQUENCES))
        return "".join(draw(st.lists(pieces, max_size=12)))
    n = draw(st.sampled_from(LENGTHS))
    if kind == 1:  # one character repeated to a limit
        return draw(characters) * n
    ascii_text = st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=n, max_size=n
    )
    text = list(draw(ascii_text))
    if kind == 2 and text:  # printable ASCII with one character of any category somewhere
        text[draw(st.integers(0, len(text) - 1))] = draw(characters)
    return "".join(text)  # kind 3: printable ASCII of a length around a limit


@st.composite
def field_strings(draw, limit: int) -> str:
    """Strings aimed at one text field: its length bounds, or one special character."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        n = draw(st.sampled_from((0, 1, limit - 1, limit, limit + 1, 2 * limit)))
        fill = draw(st.sampled_from(("x", "é", "😀", " ", "\xa0", "\x00", "\u2028")))
        return fill * n
    if kind == 1:
        text = list(
            draw(
                st.text(
                    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                    min_size=1,
                    max_size=limit,
                )
            )
        )
        text.insert(draw(st.integers(0, len(text))), draw(st.sampled_from(SPECIAL_CHARACTERS)))
        return "".join(text)[: draw(st.sampled_from((limit, limit + 1)))]
    return draw(strings())


BOUNDARY_INTS = (
    0, 1, -1, 2, 30000,
    10**12 - 1, 10**12, 10**12 + 1,
    2**31 - 1, 2**31, 2**32,
    2**53 - 2, 2**53 - 1, 2**53, 2**53 + 1,
    2**63 - 1, 2**63, 2**64, -(2**63), 10**30, -(10**30),
)  # fmt: skip

# Around every bound: 0, 10**12 (cdn, p2p) and 2**53 - 1 (timespan, sessionDuration).
near_bounds = st.builds(
    lambda bound, offset: bound + offset,
    st.sampled_from((0, 10**12, 2**53 - 1, 2**63, 2**64)),
    st.integers(-3, 3),
)

integers = st.one_of(
    near_bounds,
    st.sampled_from(BOUNDARY_INTS),
    st.integers(),
    st.integers(min_value=10**12, max_value=2**53 + 1),  # between the two limits
)

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from((0.0, -0.0, 1.0, 30000.0, 1e12, 1e12 + 1, 2.0**53, 0.5, math.inf, math.nan)),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    floats,
    strings(),
    st.sampled_from(("0", "1", "30000", "1e3", "true", "null", "", " ")),
)

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), strings()), children, max_size=4),
    ),
    max_leaves=12,
)

# What a mutated field gets: weighted towards the values that test a bound.
replacements = st.one_of(integers, strings(), st.booleans(), floats, st.none(), json_values)


# What a name may hold: every category but Cc, Cs, Zl and Zp. Zs, Cf, Co and
# Cn (NBSP, zero-width joiner, private use, unassigned) are allowed by the
# schema but refused by ``str.isprintable``: they take the schema path.
ALLOWED_CATEGORIES = tuple(c for c in ALL_CATEGORIES if c not in ("Cc", "Cs", "Zl", "Zp"))


@st.composite
def valid_payloads(draw) -> dict[str, Any]:
    """A payload the schema accepts, with names the fast path accepts or not."""
    names = st.one_of(
        st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=8),
        st.text(st.characters(categories=ALLOWED_CATEGORIES), min_size=1, max_size=8),
        st.sampled_from(("acme", "a b", "a\xa0b", "é直😀", "{0}", "a:b", "x" * 128)),
    )
    body: dict[str, Any] = {}
    for name, limit in STR_LIMITS.items():
        body[name] = draw(names)[:limit]
    for name, limit in INT_LIMITS.items():
        body[name] = draw(
            st.one_of(st.sampled_from((0, 1, 30000, limit - 1, limit)), st.integers(0, limit))
        )
    return body


@st.composite
def mutated_payloads(draw) -> dict[str, Any]:
    """A valid payload with a few fields replaced by anything or removed; maybe extras.

    Mostly one field: the others stay valid, so that field alone decides.
    """
    body = draw(st.one_of(st.just(payload()), valid_payloads()))
    extras = draw(st.dictionaries(strings(), json_values, max_size=3))
    item = {**extras, **body}
    count = draw(st.sampled_from((0, 1, 1, 1, 1, 1, 2, 3)))
    for name in draw(
        st.lists(st.sampled_from(FIELDS), min_size=count, max_size=count, unique=True)
    ):
        roll = draw(st.integers(0, 9))
        if roll == 0:
            del item[name]
        elif roll <= 3:
            item[name] = draw(replacements)
        else:  # a value of the right JSON type, around its bounds
            item[name] = draw(field_strings(STR_LIMITS[name]) if name in STR_LIMITS else integers)
    return item


items = st.one_of(mutated_payloads(), json_values, valid_payloads())


def schema_load(item: Any) -> dict[str, Any] | None:
    """What the schema returns for ``item``, or None if it rejects it."""
    try:
        return SCHEMA.load(item)
    except ValidationError:
        return None


def assert_same_result(fast: dict[str, Any], slow: dict[str, Any]) -> None:
    assert fast == slow
    # Equal is not enough: 1 == True == 1.0, so compare the types too.
    assert list(sorted(fast)) == list(sorted(slow)) == sorted(FIELDS)
    for name in FIELDS:
        assert type(fast[name]) is type(slow[name]), name


# --- properties -----------------------------------------------------------------


@PROPERTY
@given(item=items)
@example(item=payload())
@example(item=payload(customer="a\xa0b"))
@example(item=payload(cdn=True))
@example(item=payload(p2p=10**12 + 1))
@example(item=payload(token="x" * 129))
@example(item=payload(content="a\x00b"))
@example(item=payload(customer="a\u2028b"))
def test_fast_load_accepts_only_what_the_schema_accepts(item: Any) -> None:
    fast = fast_load(item)
    slow = schema_load(item)
    if fast is not None:
        assert slow is not None, f"fast_load accepted what the schema rejects: {item!r}"
        assert_same_result(fast, slow)
        assert fast is not item


@PROPERTY
@given(item=mutated_payloads())
def test_mutated_payloads_get_the_schema_decision(item: dict[str, Any]) -> None:
    fast = fast_load(item)
    slow = schema_load(item)
    if fast is not None:
        assert slow is not None, f"fast_load accepted what the schema rejects: {item!r}"
        assert_same_result(fast, slow)


@PROPERTY
@given(batch=st.lists(items, min_size=1, max_size=8))
def test_load_payloads_takes_the_schema_decision_for_every_item(batch: list[Any]) -> None:
    loaded, errors = load_payloads(SCHEMA, batch)

    expected = [schema_load(item) for item in batch]
    rejected = {str(n) for n, result in enumerate(expected) if result is None}
    assert set(errors) == rejected
    accepted = [result for result in expected if result is not None]
    assert len(loaded) == len(accepted)
    for got, want in zip(loaded, accepted, strict=True):
        assert_same_result(got, want)
    for n, messages in errors.items():
        assert isinstance(messages, dict) and messages, (n, messages)


@PROPERTY
@given(item=mutated_payloads())
def test_load_payloads_names_the_same_fields_as_the_schema(item: dict[str, Any]) -> None:
    _, errors = load_payloads(SCHEMA, [item])
    try:
        SCHEMA.load(item)
    except ValidationError as exc:
        assert errors == {"0": exc.normalized_messages()}
    else:
        assert errors == {}


# --- explicit examples ------------------------------------------------------------


def test_plain_payload_takes_the_fast_path() -> None:
    body = payload(extra={"nested": [1, 2]}, firmware="2.1")

    assert fast_load(body) == {k: v for k, v in body.items() if k in FIELDS}
    assert fast_load(body) == SCHEMA.load(body)


@pytest.mark.parametrize(
    "name", ["a\xa0b", "a\u200db", "\u00ad", "x\u2007y", "\ue000", "👩\u200d💻"]
)
def test_printable_names_refused_by_isprintable_go_through_the_schema(name: str) -> None:
    body = payload(customer=name)

    assert fast_load(body) is None
    loaded, errors = load_payloads(SCHEMA, [body])
    assert errors == {}
    assert loaded == [SCHEMA.load(body)]
    assert loaded[0]["customer"] == name


@pytest.mark.parametrize("name", ["a\u2028b", "a\u2029b", "\x00", "a\x7f", "a\ud800", "\x85"])
def test_control_characters_separators_and_surrogates_are_rejected(name: str) -> None:
    body = payload(content=name)

    assert fast_load(body) is None
    assert schema_load(body) is None
    loaded, errors = load_payloads(SCHEMA, [body])
    assert loaded == []
    assert set(errors["0"]) == {"content"}


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("field", list(INT_LIMITS))
def test_booleans_are_not_integers(field: str, value: bool) -> None:
    body = payload(**{field: value})

    assert fast_load(body) is None
    assert schema_load(body) is None
    assert load_payloads(SCHEMA, [body])[1] == {"0": {field: ["Not a valid integer."]}}


@pytest.mark.parametrize("field", ["cdn", "p2p"])
def test_one_terabyte_is_accepted_one_byte_more_is_not(field: str) -> None:
    at_limit = payload(**{field: 10**12})
    over = payload(**{field: 10**12 + 1})

    assert fast_load(at_limit) == SCHEMA.load(at_limit)
    assert fast_load(at_limit)[field] == 10**12
    assert fast_load(over) is None
    assert schema_load(over) is None
    assert set(load_payloads(SCHEMA, [at_limit, over])[1]) == {"1"}


@pytest.mark.parametrize("field", ["timespan", "sessionDuration"])
def test_durations_go_up_to_two_to_the_53_minus_one(field: str) -> None:
    assert fast_load(payload(**{field: 2**53 - 1}))[field] == 2**53 - 1
    assert fast_load(payload(**{field: 2**53})) is None
    assert schema_load(payload(**{field: 2**53})) is None


@pytest.mark.parametrize(("field", "limit"), list(STR_LIMITS.items()))
def test_string_length_limits(field: str, limit: int) -> None:
    assert fast_load(payload(**{field: "x" * limit}))[field] == "x" * limit
    assert fast_load(payload(**{field: "😀" * limit}))[field] == "😀" * limit  # code points
    for bad in ("", "x" * (limit + 1)):
        assert fast_load(payload(**{field: bad})) is None
        assert schema_load(payload(**{field: bad})) is None


@pytest.mark.parametrize("value", [1.0, "1", None, [], {}, 2**53 - 0.5])
def test_other_json_types_are_rejected_by_both(value: Any) -> None:
    body = payload(cdn=value)

    assert fast_load(body) is None
    assert schema_load(body) is None


@pytest.mark.parametrize("item", [None, 1, "x", [], [payload()], True])
def test_non_objects_are_rejected_by_both(item: Any) -> None:
    assert fast_load(item) is None
    assert schema_load(item) is None
    assert set(load_payloads(SCHEMA, [item])[1]) == {"0"}

"""What a payload body may be (docs/payload.md), decided without HTTP or Redis.

One table, ``RULES``: each row is a rule and the values that show it,
applied to every field it concerns. A row is decided the way ``POST /stats``
decides a body: ``parse_json`` (JSON, duplicate keys, nesting, UTF-8), then
``load_payloads`` (the fast path ``fast_load``, else ``PayloadSchema``). For
every JSON object on the way, the fast path must either step aside (None) or
load exactly what the schema loads, types included. Two hypothesis
properties hold the fast path and ``load_payloads`` to the schema's decision
over arbitrary input.

The HTTP tests (``tests/integration/test_ingest_api.py``) check only how a
decision is answered: status, error body, nothing written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from payload_stats.ingest.body import parse_json
from payload_stats.ingest.schema import PayloadSchema, fast_load, load_payloads
from payload_stats.web.errors import InvalidJSON
from tests.conftest import payload

SCHEMA = PayloadSchema()

STR_LIMITS = {"token": 128, "customer": 256, "content": 256}
INT_LIMITS = {"timespan": 2**53 - 1, "p2p": 10**12, "cdn": 10**12, "sessionDuration": 2**53 - 1}
TEXT = tuple(STR_LIMITS)
BYTES = ("cdn", "p2p")
DURATIONS = ("timespan", "sessionDuration")
INTEGERS = tuple(INT_LIMITS)
FIELDS = (*TEXT, *INTEGERS)

README_PAYLOAD = {
    "token": "8c7e4d7a-4b0e-4f5e-9d55-0b8f1c1f2a10",
    "customer": "acme-tv",
    "content": "live/channel-1",
    "timespan": 30000,
    "p2p": 5242880,
    "cdn": 1048576,
    "sessionDuration": 30000,
}


# --- deciding a body ------------------------------------------------------------------------


ACCEPTED = "accepted"
NAMED = "the field is named"  # invalid_payload, naming exactly the field at fault
NOT_JSON = "not JSON"  # invalid_json
NOT_AN_OBJECT = "not an object"  # invalid_payload, "_schema"


def schema_load(item: Any) -> dict[str, Any] | None:
    """What the schema loads from ``item``, or None if it rejects it."""
    try:
        return SCHEMA.load(item)
    except ValidationError:
        return None


def assert_same_result(fast: dict[str, Any], slow: dict[str, Any] | None) -> None:
    assert slow is not None, "fast_load accepted what the schema rejects"
    assert fast == slow
    # Equal is not enough: 1 == True == 1.0, so compare the types too.
    assert sorted(fast) == sorted(slow) == sorted(FIELDS)
    for name in FIELDS:
        assert type(fast[name]) is type(slow[name]), name


def decide(body: bytes) -> tuple[str, Any]:
    """(outcome, detail) of ``body`` as POST /stats decides it."""
    try:
        item = parse_json(body)
    except InvalidJSON as exc:
        return NOT_JSON, exc.message
    fast = fast_load(item)
    if fast is not None:
        assert_same_result(fast, schema_load(item))
    loaded, errors = load_payloads(SCHEMA, [item])
    if not errors:
        return ACCEPTED, loaded[0]
    if not isinstance(item, dict):
        return NOT_AN_OBJECT, errors["0"]
    return NAMED, errors["0"]


@dataclass(frozen=True)
class Raw:
    """A value written as raw JSON text (what json.dumps cannot produce)."""

    text: str


MISSING = object()


def twice(field: str, first: str) -> bytes:
    """The conftest payload with ``field`` written twice: ``first`` (raw JSON), then its own."""
    return b"{" + f'"{field}": {first}, '.encode() + encode(payload())[1:]


def encode(value: Any) -> bytes:
    """UTF-8 JSON, non-ASCII as is; lone surrogates (not encodable) as escapes."""
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")


def body_with(field: str, value: Any) -> bytes:
    """The conftest payload with ``field`` set to ``value`` (or removed, or raw JSON)."""
    if value is MISSING:
        body = payload()
        del body[field]
        return encode(body)
    if isinstance(value, Raw):
        return encode(payload(**{field: "__RAW__"})).replace(b'"__RAW__"', value.text.encode())
    return encode(payload(**{field: value}))


# --- the table ------------------------------------------------------------------------------

CONTROL = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]
LONE_SURROGATES = ['"\\ud800"', '"\\udfff"', '"a\\udbffz"', '"\\ude00\\ud83d"', '"ok\\ud83d"']
PRINTABLE = [
    "直播频道",  # CJK
    "\U0001f3ac\U0001f600",  # emoji
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # emoji with zero-width joiners
    "עברית",  # RTL
    "مرحبا بالعالم",
    "e\u0301\u0327",  # combining marks
    "a b",
    " ",
    " padded ",  # kept as sent
    "Ünïcödé",
    "a:b{c}[d]/e\\f'g\"h%i",
    'quote " comma , \\',
    "\u202eevil",  # RTL override: a format character, printable enough
]
# Printable, but refused by str.isprintable: the fast path steps aside for the schema.
NOT_ISPRINTABLE = ["a\xa0b", "a\u200db", "\u00ad", "x\u2007y", "\ue000", "👩\u200d💻", "\ufeff"]


@dataclass(frozen=True)
class Rule:
    """Each value, put in each of ``fields``, is accepted or named at fault."""

    fields: tuple[str, ...]
    values: tuple[Any, ...]
    outcome: str  # ACCEPTED or NAMED


@dataclass(frozen=True)
class Body:
    """Whole bodies (one, or a list) and their outcome: ``loaded`` when accepted,
    ``fields`` named when refused, ``says`` some text of the error message."""

    body: bytes | Any
    outcome: str
    says: str = ""
    fields: tuple[str, ...] = ()
    loaded: dict[str, Any] | None = None


RULES = {
    # Required fields, and what is ignored.
    "every field is required": Rule(FIELDS, (MISSING,), NAMED),
    "an empty object names all seven": Body({}, NAMED, fields=FIELDS),
    "the README payload is accepted": Body(README_PAYLOAD, ACCEPTED, loaded=README_PAYLOAD),
    "unknown fields are ignored and dropped": Body(
        {
            **payload(),
            "firmware": "9.1.0",
            "metrics": {"rebuffer": [1, 2, {"x": None}], "bitrate": 4.5e6},
            "Token": "other-token",  # names are case-sensitive
            "CDN": 999,
            "sessionduration": -1,
            "": None,
            "big": 10**30,
        },
        ACCEPTED,
        loaded=payload(),
    ),
    "a 5000-digit integer in an unknown field is ignored": Body(
        encode(payload())[:-1] + b', "future": ' + b"9" * 5000 + b"}", ACCEPTED, loaded=payload()
    ),
    "unknown fields do not excuse invalid known ones": Body(
        payload(cdn=-1, future_field="x"), NAMED, fields=("cdn",)
    ),
    "every invalid field is named": Body(
        {
            k: v
            for k, v in payload(token="", customer="a\x00", cdn=True, p2p=1.0, timespan=-1).items()
            if k != "sessionDuration"
        },
        NAMED,
        fields=("token", "customer", "cdn", "p2p", "timespan", "sessionDuration"),
    ),
    # Integers: JSON integers within their bounds.
    "integers may be 0 and 1": Rule(INTEGERS, (0, 1), ACCEPTED),
    "bytes go up to 10**12": Rule(BYTES, (10**12,), ACCEPTED),
    "bytes above 10**12 are refused": Rule(BYTES, (10**12 + 1, 2**53 - 1), NAMED),
    "durations go up to 2**53 - 1": Rule(DURATIONS, (10**12 + 1, 2**53 - 1), ACCEPTED),
    "durations above 2**53 - 1 are refused": Rule(DURATIONS, (2**53,), NAMED),
    "integers are not negative": Rule(INTEGERS, (-1, -(2**63)), NAMED),
    "integers past 64 bits are refused": Rule(INTEGERS, (2**63, 2**64, 10**64), NAMED),
    "a boolean is not an integer": Rule(INTEGERS, (True, False), NAMED),
    "a float is not an integer, even integral": Rule(
        INTEGERS, (1.5, 30000.0, 0.0, -0.0, 2**53 - 0.5, Raw("3e4"), Raw("1e999999")), NAMED
    ),
    "a string is not an integer": Rule(INTEGERS, ("30000", "0", ""), NAMED),
    "null, arrays and objects are not integers": Rule(
        INTEGERS, (None, [], [1], {}, {"value": 1}), NAMED
    ),
    "thousands of digits name the field": Rule(
        INTEGERS,
        (Raw("9" * 5000), Raw("-" + "9" * 5000), Raw("1" + "0" * 5000 + ".0")),
        NAMED,
    ),
    # Text: 1..limit characters (code points) of printable text.
    "text of 1 character is accepted": Rule(TEXT, ("x", "😀"), ACCEPTED),
    "text may be as long as its limit": Rule(TEXT, (Raw("LIMIT:x"), Raw("LIMIT:📺")), ACCEPTED),
    "text longer than its limit is refused": Rule(
        TEXT, (Raw("LIMIT+1:x"), Raw("LIMIT+1:é"), Raw("LIMIT+1:📺"), Raw("LIMIT+100:x")), NAMED
    ),
    "empty text is refused": Rule(TEXT, ("",), NAMED),
    "text must be a string": Rule(
        TEXT, (True, False, 1, 0, 1.5, None, ["acme"], [], {"name": "acme"}, {}), NAMED
    ),
    "printable text of any script is accepted": Rule(TEXT, tuple(PRINTABLE), ACCEPTED),
    "text str.isprintable refuses is still printable": Rule(TEXT, tuple(NOT_ISPRINTABLE), ACCEPTED),
    "an escaped surrogate pair is one character": Rule(
        TEXT, (Raw('"tv-\\ud83d\\udcfa"'),), ACCEPTED
    ),
    "control characters are refused, anywhere": Rule(
        TEXT, tuple(f"ab{c}cd" for c in CONTROL) + ("\x00", "abcd\x1b", "\x7fabcd"), NAMED
    ),
    "line and paragraph separators are refused": Rule(TEXT, ("a\u2028b", "a\u2029b"), NAMED),
    "lone surrogates are refused": Rule(TEXT, tuple(Raw(s) for s in LONE_SURROGATES), NAMED),
    # JSON allows DEL and the C1 controls unescaped: the schema must catch them.
    "unescaped DEL and NEL are refused": Rule(TEXT, (Raw('"ab\x7fcd"'), Raw('"ab\x85cd"')), NAMED),
    # Bodies that are no payload at all.
    "duplicate keys are refused, naming the key": Body(
        twice("token", '"a"'), NOT_JSON, "'token' appears twice"
    ),
    # A parser differential: another JSON reader would bill the first value.
    "a duplicate byte count is refused": Body(
        twice("cdn", "1000000000000"), NOT_JSON, "'cdn' appears twice"
    ),
    "a duplicate key written with escapes is refused": Body(
        b'{"c\\u0064n": 5, ' + encode(payload())[1:], NOT_JSON, "'cdn' appears twice"
    ),
    "a repeated unknown field is not an error": Body(
        encode(payload())[:-1] + b', "x": 1, "x": 2}', ACCEPTED, loaded=payload()
    ),
    "NaN and the infinities are not JSON, anywhere": Body(
        [
            body_with(field, Raw(constant))
            for field in ("cdn", "firmware")
            for constant in ("NaN", "Infinity", "-Infinity")
        ],
        NOT_JSON,
    ),
    "invalid JSON is refused": Body(
        [
            b"{",
            b"}",
            b"{token: 1}",
            b"{'token': 'x'}",
            encode(payload())[:-1] + b", }",
            encode(payload()) + b"x",
            encode(payload()) * 2,
            b"nul",
            b"// payload\n" + encode(payload()),
            encode(payload()).replace(b'"acme"', b'"ac\x00me"'),
            encode(payload()).replace(b'"acme"', b'"ac\nme"'),
            encode(payload()).replace(b'"acme"', b'"ac\tme"'),
            encode(payload()).replace(b'"acme"', b'"ac\\qme"'),
            encode(payload()).replace(b'"acme"', b'"ac\\u12"'),
            body_with("cdn", Raw("0x10")),
            body_with("cdn", Raw("0100")),
            body_with("cdn", Raw("+1")),
            body_with("cdn", Raw(".5")),
            body_with("cdn", Raw("")),
        ],
        NOT_JSON,
    ),
    "an empty body is refused": Body([b"", b" ", b"\r\n\t "], NOT_JSON, "empty"),
    "bytes that are not UTF-8 are refused": Body(
        [
            encode(payload()).replace(b'"acme"', b'"' + raw + b'"')
            for raw in (
                b"\xff",
                b"\xc0\xaf",  # overlong "/"
                b"\xe6\x97",  # truncated sequence
                b"caf\xe9",  # Latin-1
                b"\xed\xa0\x80",  # an encoded surrogate
                b"\xed\xa0\xbd\xed\xb3\xba",  # CESU-8
                b"\xf4\x90\x80\x80",  # above U+10FFFF
            )
        ]
        + [encode(payload())[:-1] + b', "\xff": 1}'],
        NOT_JSON,
    ),
    "nesting deep enough to exhaust a parser is refused": Body(
        [
            b"[" * 100_000,
            b'{"a":' * 100_000,
            b"[" * 100_000 + b"]" * 100_000,
            body_with("cdn", Raw("[" * 100_000 + "]" * 100_000)),
            encode(payload())[:-1] + b', "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        ],
        NOT_JSON,
        "nested too deeply",
    ),
    "every truncation of a payload is refused": Body(
        [
            encode(payload(customer="acmé 📺"))[:cut]
            for cut in range(len(encode(payload(customer="acmé 📺"))))
        ],
        NOT_JSON,
    ),
    "JSON that is not an object is refused": Body(
        [b"[]", encode([payload()]), b'"payload"', b"42", b"-1.5", b"null", b"true", b"false"],
        NOT_AN_OBJECT,
    ),
}


def _resolve(field: str, value: Any) -> Any:
    """``Raw("LIMIT+n:c")``: the character ``c`` repeated to the field's limit plus n."""
    if isinstance(value, Raw) and value.text.startswith("LIMIT"):
        head, char = value.text.split(":", 1)
        extra = int(head[len("LIMIT+") :]) if "+" in head else 0
        return char * (STR_LIMITS[field] + extra)
    return value


@pytest.mark.parametrize("name", list(RULES))
def test_each_rule(name: str) -> None:
    rule = RULES[name]
    if isinstance(rule, Rule):
        for field in rule.fields:
            for value in rule.values:
                value = _resolve(field, value)
                outcome, detail = decide(body_with(field, value))
                assert outcome == rule.outcome, (field, value, detail)
                if outcome == NAMED:
                    assert set(detail) == {field}, (value, detail)
                    assert all(isinstance(m, str) and m for m in detail[field]), detail
                elif not isinstance(value, Raw):
                    assert detail == {**payload(), field: value}  # loaded as sent
                    assert type(detail[field]) is type(value), (field, value)
        return
    bodies = rule.body if isinstance(rule.body, list) else [rule.body]
    for body in bodies:
        data = body if isinstance(body, bytes) else encode(body)
        outcome, detail = decide(data)
        assert outcome == rule.outcome, (data[:200], detail)
        assert rule.says in str(detail), detail
        if outcome == ACCEPTED:
            assert detail == rule.loaded
        if outcome == NAMED:
            assert set(detail) == set(rule.fields), detail


def test_the_messages_of_a_missing_field_and_a_boolean() -> None:
    missing = payload()
    del missing["cdn"]

    assert load_payloads(SCHEMA, [missing, payload(p2p=True)])[1] == {
        "0": {"cdn": ["Missing data for required field."]},
        "1": {"p2p": ["Not a valid integer."]},
    }


def test_the_common_payload_takes_the_fast_path() -> None:
    assert fast_load(README_PAYLOAD) == README_PAYLOAD
    assert fast_load(payload(extra={"nested": [1, 2]}, firmware="2.1")) == payload()


def test_load_payloads_keeps_the_valid_and_names_the_invalid_by_index() -> None:
    items = [payload(token="a"), payload(cdn=-1), "x", payload(token="b", extra=1), None]

    loaded, errors = load_payloads(SCHEMA, items)

    assert loaded == [payload(token="a"), payload(token="b")]
    assert errors == {
        "1": {
            "cdn": ["Must be greater than or equal to 0 and less than or equal to 1000000000000."]
        },
        "2": {"_schema": ["Expected a JSON object."]},
        "4": {"_schema": ["Expected a JSON object."]},
    }


# --- properties: the fast path and load_payloads decide as the schema does ------------------

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


@PROPERTY
@given(item=items)
@example(item=payload())
@example(item=payload(customer="a\xa0b"))
@example(item=payload(cdn=True))
@example(item=payload(p2p=10**12 + 1))
@example(item=payload(token="x" * 129))
@example(item=payload(content="a\x00b"))
@example(item=payload(customer="a\u2028b"))
def test_fast_load_takes_only_what_the_schema_takes_and_loads_the_same(item: Any) -> None:
    fast = fast_load(item)
    if fast is not None:
        assert_same_result(fast, schema_load(item))
        assert fast is not item


@PROPERTY
@given(batch=st.lists(items, min_size=1, max_size=8))
def test_load_payloads_decides_every_item_as_the_schema_does(batch: list[Any]) -> None:
    loaded, errors = load_payloads(SCHEMA, batch)

    accepted = []
    for n, item in enumerate(batch):
        try:
            accepted.append(SCHEMA.load(item))
        except ValidationError as exc:
            if isinstance(item, dict):
                assert errors[str(n)] == exc.normalized_messages()
            else:
                assert errors[str(n)] == {"_schema": ["Expected a JSON object."]}
        else:
            assert str(n) not in errors
    assert len(loaded) == len(accepted)
    for got, want in zip(loaded, accepted, strict=True):
        assert_same_result(got, want)

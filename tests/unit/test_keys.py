"""Redis key names: the (customer, content) ident, the shard of a token, hash tags.

Idents must keep every pair apart whatever the names hold (docs/stats-table.md:
``"a:b"/"c"`` and ``"a"/"b:c"`` are two rows); shards must be stable across
processes; every key of a shard must hash to the shard's cluster slot.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payload_stats.buffer.keys import Keys, decode_ident, encode_ident, shard_of

# Any text except lone surrogates (not encodable as UTF-8), biased towards the
# characters of the encoding itself.
names = st.text(
    alphabet=st.one_of(
        st.sampled_from(":{}0123456789"),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=40,
)


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3), bit by bit: an independent reference for shard_of."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def hash_tag(key: str | bytes) -> bytes:
    """The part of a key Redis Cluster hashes: the first non-empty {...}, else the key."""
    key = key.encode() if isinstance(key, str) else key
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


# --- idents ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer", "content", "ident"),
    [
        ("acme", "movie-1", b"4:acme:movie-1"),
        ("a:b", "c", b"3:a:b:c"),
        ("a", "b:c", b"1:a:b:c"),
        ("é", "x", b"2:\xc3\xa9:x"),  # the length counts UTF-8 bytes
        ("{0}", "", b"3:{0}:"),
    ],
)
def test_encode_ident(customer: str, content: str, ident: bytes) -> None:
    assert encode_ident(customer, content) == ident
    assert decode_ident(ident) == (customer, content)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("1:a", "b"), ("1", "a:b")),
        (("1:a", "b"), ("a", "b")),
        (("3:a", "b:c"), ("3:a:b", "c")),
        (("", "1:a:b"), ("a", "b")),
        (("2:ab", "c"), ("ab", "c")),
        (("a", ""), ("", "a")),
    ],
)
def test_separator_tricks_keep_pairs_apart(first: tuple, second: tuple) -> None:
    assert encode_ident(*first) != encode_ident(*second)
    assert decode_ident(encode_ident(*first)) == first
    assert decode_ident(encode_ident(*second)) == second


@given(names, names)
def test_ident_round_trip(customer: str, content: str) -> None:
    assert decode_ident(encode_ident(customer, content)) == (customer, content)


@given(names, names, names, names)
def test_different_pairs_give_different_idents(a: str, b: str, c: str, d: str) -> None:
    if (a, b) != (c, d):
        assert encode_ident(a, b) != encode_ident(c, d)


@pytest.mark.parametrize(
    "ident",
    [
        b"",
        b"acme",
        b"acme:movie",
        b":acme:movie",
        b"-1:a:b",
        b" 1:a:b",
        b"1a:b",
        b"\xd9\xa3:abc:d",  # an Arabic-Indic digit is not a length
        b"5:acme",  # shorter than its length
        b"4:acme",  # no separator after the customer
        b"3:acme:movie",  # length lands inside the customer
        b"99999999999999999999:a:b",
        b"1:\xff:x",  # not UTF-8
        b"2:\xc3\xa9:\xff",
    ],
)
def test_decode_rejects_malformed_idents(ident: bytes) -> None:
    with pytest.raises(ValueError):
        decode_ident(ident)


# --- shards ---------------------------------------------------------------


def test_reference_crc32_matches_the_standard_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926


@pytest.mark.parametrize(
    ("token", "shards", "shard"),
    [
        ("123456789", 8, 6),  # CRC-32 0xCBF43926
        ("123456789", 16384, 0x3926),
        ("123456789", 1, 0),
        ("The quick brown fox jumps over the lazy dog", 8, 1),  # 0x414FA339
        ("The quick brown fox jumps over the lazy dog", 7, 0x414FA339 % 7),
        ("", 8, 0),
    ],
)
def test_shard_of_fixed_values(token: str, shards: int, shard: int) -> None:
    assert shard_of(token, shards) == shard


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))), st.integers(1, 16384))
def test_shard_of_is_crc32_of_utf8_modulo_shards(token: str, shards: int) -> None:
    shard = shard_of(token, shards)

    assert 0 <= shard < shards
    assert shard == crc32(token.encode("utf-8")) % shards


# --- key names ------------------------------------------------------------


def test_documented_key_layout() -> None:
    keys = Keys("ps")
    ident = b"4:acme:movie-1"

    assert keys.windows(3) == "ps:{3}:windows"
    assert keys.index(3, 7) == "ps:{3}:w:7:idx"
    assert keys.counters(3, 7, ident) == b"ps:{3}:w:7:c:4:acme:movie-1"
    assert keys.tokens(3, 7) == "ps:{3}:t:7"
    assert keys.snapshots(3) == "ps:{3}:snaps"
    assert keys.snapshot_list(3, "f1", 7) == "ps:{3}:x:f1:7:list"
    assert keys.snapshot_counters(3, "f1", 7, ident) == b"ps:{3}:x:f1:7:c:4:acme:movie-1"
    assert keys.flush_lock() == "ps:lock:flush"
    assert keys.flush_stats() == "ps:flush:stats"


def shard_keys(keys: Keys, shard: int, k: int, flush_id: str, ident: bytes) -> list:
    return [
        keys.windows(shard),
        keys.index(shard, k),
        keys.counters(shard, k, ident),
        keys.tokens(shard, k),
        keys.tokens(shard, k - 1),
        keys.snapshots(shard),
        keys.snapshot_list(shard, flush_id, k),
        keys.snapshot_counters(shard, flush_id, k, ident),
    ]


@pytest.mark.parametrize(
    ("customer", "content"),
    [("acme", "movie"), ("{1}", "{2}"), ("}{", "{"), ("a{b}c", "}x{y}"), ("{}", "{}")],
)
def test_braces_in_names_do_not_change_the_hash_tag(customer: str, content: str) -> None:
    ident = encode_ident(customer, content)

    for shard in (0, 5, 16383):
        tags = {hash_tag(key) for key in shard_keys(Keys("ps"), shard, 42, "f1", ident)}
        assert tags == {str(shard).encode()}


@given(
    prefix=st.text(
        alphabet=st.characters(exclude_categories=("Cs", "Zs", "Cc"), exclude_characters="{}"),
        min_size=1,
        max_size=10,
    ),
    shard=st.integers(0, 16383),
    k=st.integers(0, 10**10),
    flush_id=st.text(alphabet="0123456789abcdef-:{}", min_size=1, max_size=36),
    customer=names,
    content=names,
)
def test_every_key_of_a_shard_carries_its_hash_tag(
    prefix: str, shard: int, k: int, flush_id: str, customer: str, content: str
) -> None:
    ident = encode_ident(customer, content)

    for key in shard_keys(Keys(prefix), shard, k, flush_id, ident):
        assert hash_tag(key) == str(shard).encode(), key

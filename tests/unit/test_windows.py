"""Window arithmetic (docs/windows.md): exact values, boundaries, properties.

A payload received at ``t`` belongs to window ``k = floor(t / L)``, the
half-open interval ``[k*L, (k+1)*L)``; the window's time is its end; it may be
flushed once ``now >= end + grace``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payload_stats.windows import (
    last_closed_window,
    token_memory_ttl,
    window_end,
    window_end_datetime,
    window_index,
)
from tests.conftest import START

L = 300
K = 5_985_624  # the window holding START (2026-11-26T10:00:01Z)
K_START = K * L  # 1_795_687_200, 2026-11-26T10:00:00Z
K_END = (K + 1) * L  # 1_795_687_500, 2026-11-26T10:05:00Z

# Realistic reception times: microsecond resolution, up to the year ~2100.
realistic_times = st.integers(0, 4_102_444_800 * 10**6).map(lambda us: us / 10**6)
lengths = st.integers(1, 86_400)
# Graces that are exact in binary, so "end + grace" is an exact instant.
graces = st.sampled_from([0, 0.5, 1, 2.5, 5, 10, 60.25])


def test_start_is_in_window_k() -> None:
    assert window_index(START, L) == K


@pytest.mark.parametrize(
    ("t", "k"),
    [
        (0, 0),
        (0.0, 0),
        (299.999999, 0),
        (300, 1),
        (300.0, 1),
        (K_START, K),  # exactly on k*L: belongs to window k
        (float(K_START), K),
        (K_START + 0.000001, K),
        (K_START - 0.000001, K - 1),
        (K_END - 0.000001, K),
        (K_END, K + 1),
        (-0.5, -1),
    ],
)
def test_window_index(t: float, k: int) -> None:
    assert window_index(t, L) == k


def test_window_index_other_lengths() -> None:
    assert window_index(59.999999, 60) == 0
    assert window_index(60, 60) == 1
    assert window_index(86_399.999999, 86_400) == 0
    assert window_index(86_400, 86_400) == 1
    assert window_index(7, 1) == 7


def test_window_end() -> None:
    assert window_end(0, L) == 300
    assert window_end(K, L) == 1_795_687_500
    assert window_end(K, 60) == (K + 1) * 60


def test_window_end_datetime_is_utc() -> None:
    end = window_end_datetime(K, L)

    assert end == datetime(2026, 11, 26, 10, 5, tzinfo=timezone.utc)
    assert end.utcoffset() is not None
    assert end.utcoffset().total_seconds() == 0


@given(realistic_times, lengths)
def test_window_holds_its_times(t: float, length: int) -> None:
    k = window_index(t, length)

    assert k * length <= Fraction(t) < (k + 1) * length
    assert window_end(k, length) == (k + 1) * length


@given(st.integers(-(10**9), 10**9), lengths)
def test_the_start_of_a_window_belongs_to_it(k: int, length: int) -> None:
    assert window_index(k * length, length) == k
    assert window_index(float(k * length), length) == k


@pytest.mark.parametrize("grace", [0, 0.5, 2.5, 5, 5.0])
def test_a_window_is_flushable_exactly_at_end_plus_grace(grace: float) -> None:
    assert last_closed_window(K_END + grace, L, grace) == K
    assert last_closed_window(K_END + grace - 0.000001, L, grace) == K - 1


def test_last_closed_window_at_start() -> None:
    # START is 1 s into window K; window K-1 ended 1 s ago, before its 5 s grace.
    assert last_closed_window(START, L, 5) == K - 2
    assert last_closed_window(K_START + 5, L, 5) == K - 1
    assert last_closed_window(K_START + 4.999999, L, 5) == K - 2


def test_a_grace_longer_than_a_window() -> None:
    assert last_closed_window(K_END + 450, L, 450) == K
    assert last_closed_window(K_END + 449.999999, L, 450) == K - 1


@given(realistic_times, lengths, graces)
def test_last_closed_window_is_the_newest_flushable(now: float, length: int, grace: float) -> None:
    k = last_closed_window(now, length, grace)

    assert Fraction(now) >= window_end(k, length) + Fraction(grace)
    assert Fraction(now) < window_end(k + 1, length) + Fraction(grace)


@pytest.mark.parametrize(
    ("now", "ttl"),
    [
        (K_START, 901),  # 3L until end(K) + 2L, plus the safety second
        (START, 900),
        (START + 0.5, 900),
        (K_END - 0.25, 602),
        (K_END - 0.000001, 602),
        (K_END + 10_000, 1),  # never below 1 s (EXPIRE 0 would delete the key)
    ],
)
def test_token_memory_ttl(now: float, ttl: int) -> None:
    assert token_memory_ttl(K, now, L) == ttl


@given(realistic_times, lengths)
def test_token_memory_outlives_two_windows_after_its_window(now: float, length: int) -> None:
    # A token last seen in window k may be looked up until end(k) + 2L.
    k = window_index(now, length)

    ttl = token_memory_ttl(k, now, length)

    assert isinstance(ttl, int)
    assert Fraction(now) + ttl >= (k + 3) * length
    assert Fraction(now) + ttl <= (k + 3) * length + 2

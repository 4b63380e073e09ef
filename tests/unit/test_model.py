"""The reference model (``tests/support/model.py``) against the rules in ``docs/``.

Every other test trusts the model, so its rules are pinned here with small
timelines worked out by hand: windows (docs/windows.md), sessions and token
memory (docs/sessions.md), retries (docs/retries.md), rows
(docs/stats-table.md), and what it reports as uncertain.
"""

from __future__ import annotations

import pytest

from payload_stats.config import Config
from tests.conftest import payload as base_payload
from tests.support.model import Answer, Bounds, Model, Row, Tally, Uncertain

L = 300
K = 5_985_624  # a window index
T = K * L  # its start
END = T + L  # its end: the time of its rows


def payload(**fields) -> dict:
    """conftest's payload, without watch time unless a test gives a timespan."""
    return base_payload(**{"timespan": 0, **fields})


def zero(token: str, duration: int, **fields) -> dict:
    return payload(token=token, cdn=0, p2p=0, sessionDuration=duration, **fields)


def test_a_payload_counts_in_the_window_of_its_reception_time() -> None:
    model = Model(L)
    model.receive(T, payload(token="a", cdn=1, p2p=2, timespan=30000))  # k*L is in window k
    model.receive(END - 0.001, payload(token="b", cdn=10, p2p=20, timespan=29000))
    model.receive(END, payload(token="c", cdn=100, p2p=200, content="other"))

    assert model.rows() == {
        (END, "acme", "movie-1"): Row(cdn=11, p2p=22, sessions=2, payloads=2, watch_ms=59000),
        (END + L, "acme", "other"): Row(cdn=100, p2p=200, sessions=1, payloads=1),
    }
    assert model.ends() == [END, END + L]
    assert model.window_totals(END) == {
        "rows": 1,
        "cdn": 11,
        "p2p": 22,
        "sessions": 2,
        "payloads": 2,
        "watch_ms": 59000,
    }


@pytest.mark.parametrize(
    ("first", "then", "starts"),
    [
        ({"sessionDuration": L * 1000 - 1}, None, [True]),
        ({"sessionDuration": L * 1000}, None, [False]),  # not shorter than the window
        ({"sessionDuration": 0}, {"sessionDuration": 1}, [True, False]),  # seen, with bytes
        # Seen, never started: a zero-byte payload with a short duration starts it.
        ({"sessionDuration": L * 1000}, {"cdn": 0, "p2p": 0, "sessionDuration": 1}, [False, True]),
        ({"sessionDuration": L * 1000}, {"sessionDuration": 1}, [False, False]),  # bytes: no
        # Started: a token starts at most one session, zero bytes or not.
        ({"cdn": 0, "p2p": 0, "sessionDuration": 1}, {"cdn": 0, "p2p": 0}, [True, False]),
    ],
)
def test_the_session_rule(first: dict, then: dict | None, starts: list[bool]) -> None:
    model = Model(L)
    answers = [model.receive(T, payload(token="t", **first))]
    if then is not None:
        answers.append(model.receive(T + 30, payload(token="t", **then)))

    assert [a.starts for a in answers] == starts
    assert all(a.counted and a.certain for a in answers)


def test_a_token_is_remembered_for_2L_of_silence_and_may_be_forgotten_after() -> None:
    model = Model(L)
    assert model.receive(T + 10, zero("t", 1)).starts is True
    assert model.receive(T + 10 + 2 * L, zero("t", 2)) == Answer(
        counted=True, starts=False, end=END + 2 * L
    )

    later = model.receive(T + 10 + 4 * L + 0.001, zero("t", 3))

    assert (later.counted, later.starts) == (True, None)  # forgotten or not: both allowed
    with pytest.raises(Uncertain):
        model.rows()
    assert model.bounds().rows[(END + 4 * L, "acme", "movie-1")] == (
        Row(payloads=1),
        Row(sessions=1, payloads=1),
    )


def test_what_a_forgotten_token_did_stays_uncertain_until_it_no_longer_matters() -> None:
    model = Model(L)
    assert model.receive(T, zero("t", 1)).starts is True
    # Silent 3L: remembered (started) or forgotten (then new, long: seen, not started).
    assert model.receive(T + 3 * L, payload(token="t", sessionDuration=L * 1000)).starts is False
    assert model.receive(T + 3 * L + 30, zero("t", 2)).starts is None
    # Either way the token has started its session now.
    assert model.receive(T + 3 * L + 60, zero("t", 3)).starts is False


def test_a_payload_with_the_retry_identity_of_a_counted_one_is_a_duplicate() -> None:
    model = Model(L)
    first = payload(token="t", cdn=7, p2p=3, sessionDuration=1000)

    assert model.receive_all(T, [first, first]) == Tally(accepted=1, duplicates=1, sessions=1)
    assert model.receive_all(T + 1, [{**first, "cdn": 999}]) == Tally(0, 1, 0)  # values ignored
    assert model.receive_all(T + 2, [{**first, "sessionDuration": 1001}]) == Tally(1, 0, 0)
    assert model.receive_all(T + 3, [{**first, "token": "u"}]) == Tally(1, 0, 1)
    # Another customer or content: another session, however alike the rest.
    assert model.receive_all(T + 4, [{**first, "customer": "x"}]) == Tally(1, 0, 1)
    assert model.receive_all(T + 5, [{**first, "content": "y"}]) == Tally(1, 0, 1)
    assert Tally(1, 2, 0).body() == {"accepted": 1, "duplicates": 2}
    assert model.rows() == {
        (END, "acme", "movie-1"): Row(21, 9, 2, 3),
        (END, "x", "movie-1"): Row(7, 3, 1, 1),
        (END, "acme", "y"): Row(7, 3, 1, 1),
    }


@pytest.mark.parametrize(
    ("dedup_seconds", "windows_later", "duplicate"),
    [
        (None, 1, True),
        (None, 2, True),  # two windows, whole
        (None, 3, False),
        (L, 1, True),
        (L, 2, False),
        (L + 1, 2, True),  # rounded up to whole windows
        (0, 0, False),  # de-duplication off
    ],
)
def test_the_retry_horizon_is_whole_windows(dedup_seconds, windows_later, duplicate) -> None:
    model = Model.of(Config(window_seconds=L, dedup_seconds=dedup_seconds))
    p = payload(token="t", sessionDuration=L * 1000)  # no session: only the horizon matters
    model.receive(END - 1, p)
    for w in range(1, windows_later):  # keep the token remembered
        model.receive(END - 1 + w * L, payload(token="t", sessionDuration=L * 1000 + w))

    assert model.receive(END + (windows_later - 1) * L + 1, p).duplicate is duplicate


def test_a_copy_within_the_horizon_is_a_retry_even_after_2L_of_silence() -> None:
    # docs/retries.md: counted at 10:03:17, a copy at 10:14:59.999 is a retry,
    # although the token (docs/sessions.md) may be forgotten by then.
    model = Model(L)
    model.receive(T + 197, zero("t", 1))
    later = model.receive(T + 3 * L - 0.001, zero("t", 1))
    new = model.receive(T + 3 * L - 0.001, zero("t", 2))

    assert later == Answer(counted=False, starts=False, end=END + 2 * L)
    assert (new.counted, new.starts) == (True, None)  # the session: forgotten or not


def test_a_reception_time_known_within_an_interval_bounds_the_rows() -> None:
    model = Model(L)
    model.receive(T + 100, payload(token="a", cdn=5, p2p=0))
    answer = model.receive(END - 0.05, payload(token="b", cdn=10, p2p=0), until=END + 0.05)

    assert (answer.counted, answer.starts, answer.end) == (True, True, None)
    with pytest.raises(Uncertain):
        model.rows()
    bounds = model.bounds()
    assert bounds.rows == {
        (END, "acme", "movie-1"): (Row(5, 0, 1, 1), Row(15, 0, 2, 2)),
        (END + L, "acme", "movie-1"): (Row(), Row(10, 0, 1, 1)),
    }
    assert bounds.totals == {("acme", "movie-1"): (Row(15, 0, 2, 2), Row(15, 0, 2, 2))}
    assert bounds.exact() == 0
    assert bounds.check({(END, "acme", "movie-1"): Row(15, 0, 2, 2)}) == []
    assert bounds.check({(END, "acme", "movie-1"): Row(5, 0, 1, 1)}) == [
        "total ('acme', 'movie-1'): stats has Row(cdn=5, p2p=0, sessions=1, payloads=1, "
        "watch_ms=0), expected Row(cdn=15, p2p=0, sessions=2, payloads=2, watch_ms=0)"
    ]


def test_the_answer_the_service_gave_settles_what_the_rules_leave_open() -> None:
    model = Model(L)
    p = payload(token="t", cdn=7, p2p=0, sessionDuration=L * 1000)
    model.receive(T, p)

    # Received in window K + 2 (a retry) or K + 3 (counted again): it was counted,
    # so in K + 3.
    open_ = model.receive(END + 2 * L - 1, p, until=END + 2 * L + 1, counted=True)
    broken = model.receive(END + 2 * L + 2, p, counted=True)  # certainly a duplicate

    assert (open_.counted, open_.end, open_.contradicted) == (None, END + 3 * L, False)
    assert (broken.counted, broken.contradicted) == (False, True)
    assert model.rows() == {
        (END, "acme", "movie-1"): Row(7, 0, 0, 1),
        (END + 3 * L, "acme", "movie-1"): Row(14, 0, 0, 2),  # followed the service
    }


def test_bounds_of_disjoint_models_add_up() -> None:
    one, two = Model(L), Model(L)
    one.receive(T, payload(token="a", cdn=1, p2p=0))
    two.receive(T, payload(token="b", cdn=2, p2p=0))

    total = Bounds.sum([one.bounds(), two.bounds()])

    row = Row(3, 0, 2, 2)
    assert total.rows == {(END, "acme", "movie-1"): (row, row)}
    assert total.check({(END, "acme", "movie-1"): row}) == []
    assert total.check({}) != []
    assert total.exact() == 1

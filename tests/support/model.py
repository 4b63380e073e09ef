"""The reference model: what the service must answer and what ``stats`` must hold.

Written from the rules in ``docs/``, never from the code under test; pure
Python, no I/O. Feed it every payload the service answered 2xx, in reception
order, with its reception time; it says whether the payload counts or is a
duplicate, whether it starts a session, and the rows the flush must write.

The rules:

- ``docs/windows.md``: a payload received at ``t`` is in window
  ``k = floor(t / L)``; its row's time is the window's end ``(k + 1) * L``.
- ``docs/stats-table.md``: one row per (window end, customer, content) with
  the sums of ``cdn`` and ``p2p``, the sessions started and the payloads
  counted (``counted_row`` is what one payload adds).
- ``docs/sessions.md``: a payload starts a session when its
  ``sessionDuration`` is shorter than the window (``< L * 1000``) and its
  token was never seen or it carries no bytes (``cdn + p2p == 0``); a token
  starts at most one session. "Token memory": the service remembers a token
  (``memory_key``) for at least ``2 * L`` after its last payload, and may
  forget it after that.
- ``docs/retries.md``: a payload with the same ``retry_identity`` as one
  counted within the de-duplication horizon (whole windows: counted in window
  ``j``, received in window ``k``, ``k - j <= horizon``) is a duplicate: it is
  answered and counts nothing, neither bytes nor a session. It renews the
  token's memory and changes nothing else the service remembers. Within the
  horizon a copy is a duplicate even if the token may have been forgotten.

Where the rules leave the service a choice the model follows every
possibility: a token silent for more than ``2 * L`` may or may not be
remembered, and a reception time known only within an interval
(``receive(t, ..., until=...)``, as ``scripts/soak.py`` knows it) may fall in
either window. Answers and rows then say what is certain: ``Answer`` fields
are ``None`` when the rules allow both values, ``rows()`` raises
``Uncertain`` unless every row is exact, and ``bounds()`` gives the lowest
and highest value every row and every (customer, content) total may take.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields
from typing import Any

Payload = Mapping[str, Any]
Key = tuple[int, str, str]  # (window end in unix seconds, customer, content)
Pair = tuple[str, str]  # (customer, content)

DEFAULT_DEDUP_WINDOWS = 2  # STATS_DEDUP_SECONDS unset: two windows


def memory_key(p: Payload) -> Hashable:
    """What token memory is keyed by (docs/sessions.md "Token memory"): a token
    under its customer and content."""
    return (p["customer"], p["content"], p["token"])


def retry_identity(p: Payload) -> Hashable:
    """What makes a payload a retry of an earlier one (docs/retries.md)."""
    return (p["customer"], p["content"], p["token"], p["sessionDuration"])


@dataclass(frozen=True)
class Row:
    """One ``stats`` row's values (docs/stats-table.md)."""

    cdn: int = 0
    p2p: int = 0
    sessions: int = 0
    payloads: int = 0
    watch_ms: int = 0

    def __add__(self, other: Row) -> Row:
        return Row(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: Row) -> Row:
        return Row(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __le__(self, other: Row) -> bool:
        """Every value at most ``other``'s (a partial order, for bounds)."""
        return all(a <= b for a, b in zip(astuple(self), astuple(other), strict=True))


def counted_row(p: Payload, starts: bool) -> Row:
    """What one counted payload adds to its row."""
    return Row(cdn=p["cdn"], p2p=p["p2p"], sessions=int(starts), payloads=1, watch_ms=p["timespan"])


def row_of(values: Mapping[str, Any]) -> Row:
    """A ``Row`` from a mapping holding (at least) its fields, e.g. a JSON row."""
    return Row(**{f.name: values[f.name] for f in fields(Row) if f.name in values})


class Uncertain(AssertionError):
    """The rules allow more than one answer where a test expected exactly one."""


@dataclass(frozen=True)
class Answer:
    """What the service must do with one payload; ``None`` where the rules allow both."""

    counted: bool | None  # False: a duplicate, answered and counted nowhere
    starts: bool | None  # it starts a session (never when not counted)
    end: int | None  # its row's time: the end of its reception window
    contradicted: bool = False  # the answer given to ``receive(counted=...)`` breaks the rules

    @property
    def duplicate(self) -> bool | None:
        return None if self.counted is None else not self.counted

    @property
    def certain(self) -> bool:
        return None not in (self.counted, self.starts, self.end)


@dataclass(frozen=True)
class Tally:
    """What one request holding several payloads must report."""

    accepted: int
    duplicates: int
    sessions: int

    def body(self) -> dict[str, int]:
        """The JSON answer of ``POST /stats`` and ``POST /stats/batch``."""
        return {"accepted": self.accepted, "duplicates": self.duplicates}


@dataclass(frozen=True)
class _Memory:
    """What the service may remember of one token: whether it has been seen and has
    started a session, and the retry identities it counted, each with the windows
    it may have been counted in (first, last)."""

    seen: bool = False
    started: bool = False
    counted: frozenset[tuple[Hashable, int, int]] = frozenset()

    def forgotten(self) -> _Memory:
        """Forgotten after 2L of silence: never seen (docs/sessions.md), but its
        retries are still recognised within the horizon (docs/retries.md)."""
        return _Memory(counted=self.counted)


@dataclass
class Bounds:
    """The lowest and highest value every row and every (customer, content) total may take.

    A row absent from ``rows`` must not exist (or hold zeros). Models of
    payloads with disjoint tokens add up: ``Bounds.sum(...)``.
    """

    rows: dict[Key, tuple[Row, Row]] = field(default_factory=dict)
    totals: dict[Pair, tuple[Row, Row]] = field(default_factory=dict)

    @classmethod
    def sum(cls, parts: Iterable[Bounds]) -> Bounds:
        out = cls()
        for part in parts:
            for mine, theirs in ((out.rows, part.rows), (out.totals, part.totals)):
                for key, (low, high) in theirs.items():
                    old_low, old_high = mine.get(key, (Row(), Row()))
                    mine[key] = (old_low + low, old_high + high)
        return out

    def exact(self) -> int:
        """How many rows are known exactly."""
        return sum(1 for low, high in self.rows.values() if low == high)

    def check(self, table: Mapping[Key, Row]) -> list[str]:
        """How ``table`` (the ``stats`` rows) breaks the bounds: one line per problem."""
        problems = []
        for key in sorted(set(self.rows) | set(table)):
            low, high = self.rows.get(key, (Row(), Row()))
            got = table.get(key, Row())
            if not low <= got <= high:
                want = f"{low}" if low == high else f"between {low} and {high}"
                problems.append(f"row {key}: stats has {got}, expected {want}")
        totals: dict[Pair, Row] = defaultdict(Row)
        for (_, customer, content), row in table.items():
            totals[(customer, content)] += row
        for pair in sorted(set(self.totals) | set(totals)):
            low, high = self.totals.get(pair, (Row(), Row()))
            got = totals.get(pair, Row())
            if not low <= got <= high:
                want = f"{low}" if low == high else f"between {low} and {high}"
                problems.append(f"total {pair}: stats has {got}, expected {want}")
        return problems


class Model:
    """The rules applied to the payloads the service answered, in reception order."""

    def __init__(
        self, window_seconds: int = 300, dedup_windows: int = DEFAULT_DEDUP_WINDOWS
    ) -> None:
        self.length = window_seconds
        self.horizon = dedup_windows  # 0: de-duplication off
        # Every memory the service may hold of a token.
        self._memory: dict[Hashable, frozenset[_Memory]] = {}
        self._last: dict[Hashable, float] = {}  # earliest reception time of its latest payload
        self._low: dict[Key, Row] = defaultdict(Row)
        self._high: dict[Key, Row] = defaultdict(Row)
        self._total_low: dict[Pair, Row] = defaultdict(Row)
        self._total_high: dict[Pair, Row] = defaultdict(Row)

    @classmethod
    def of(cls, config: Any) -> Model:
        """The model for a ``payload_stats.config.Config`` (window and horizon)."""
        length = config.window_seconds
        seconds = config.dedup_seconds
        horizon = DEFAULT_DEDUP_WINDOWS if seconds is None else math.ceil(seconds / length)
        return cls(length, horizon)

    # --- the rules ---------------------------------------------------------------------

    def window(self, t: float) -> int:
        return math.floor(t / self.length)

    def end(self, k: int) -> int:
        return (k + 1) * self.length

    def _starts(self, memory: _Memory, p: Payload) -> bool:
        short = p["sessionDuration"] < self.length * 1000
        if not memory.seen:  # never seen (or forgotten)
            return short
        return short and not memory.started and p["cdn"] + p["p2p"] == 0

    def _duplicate(self, memory: _Memory, identity: Hashable, k: int) -> set[bool]:
        """Whether a payload received in window ``k`` is a duplicate: {True}, {False} or both."""
        if self.horizon == 0:
            return {False}
        possible = {False}
        for counted, first, last in memory.counted:
            if counted != identity:
                continue
            inside = set()
            for j in range(first, last + 1):  # the windows it may have been counted in
                if j > k:  # counted in a later window than this one: the rules say nothing
                    inside |= {True, False}
                else:
                    inside.add(k - j <= self.horizon)
            if inside == {True}:
                return {True}
            possible |= inside
        return possible

    def _may_forget(self, key: Hashable, t: float, until: float) -> bool:
        """Whether the token may have been forgotten: more than 2L without payloads,
        or received before its latest payload (the rules say nothing then)."""
        last = self._last.get(key)
        return last is not None and (until - last > 2 * self.length or until < last)

    # --- feeding it --------------------------------------------------------------------

    def receive(
        self, t: float, p: Payload, *, until: float | None = None, counted: bool | None = None
    ) -> Answer:
        """Apply one payload the service answered 2xx, received at ``t``.

        ``until``: the reception time is only known to lie in ``[t, until]``.
        ``counted``: what the service answered (True: counted, False: a
        duplicate), when the caller knows it. Where the rules allow both, the
        model then follows the service; where they do not,
        ``Answer.contradicted`` is set and the model follows the service all
        the same, so one error is reported once and not again in every row.
        ``Answer.counted`` is what the rules require; ``starts`` and ``end``
        take the service's answer into account.
        """
        until = t if until is None else until
        if until < t:
            raise ValueError("until is before t")
        key, identity = memory_key(p), retry_identity(p)
        windows = range(self.window(t), self.window(until) + 1)
        memories = set(self._memory.get(key, frozenset({_Memory()})))
        if self._may_forget(key, t, until):
            memories |= {memory.forgotten() for memory in memories}

        branches = [
            (k, memory, not duplicate)
            for memory in memories
            for k in windows
            for duplicate in self._duplicate(memory, identity, k)
        ]
        required = {c for _, _, c in branches}
        contradicted = counted is not None and counted not in required
        if counted is not None:
            branches = [(k, m, counted) for k, m, c in branches if c == counted or contradicted]

        outcomes = []  # (window, counted, starts)
        # What the service may remember afterwards, the windows of this payload's
        # record merged: {(seen, started, older records, recorded): windows}. A
        # retry changes nothing it remembers (docs/retries.md).
        after: dict[tuple[bool, bool, frozenset, bool], list[int]] = defaultdict(list)
        for k, memory, is_counted in branches:
            starts = is_counted and self._starts(memory, p)
            outcomes.append((k, is_counted, starts))
            older = frozenset(r for r in memory.counted if r[2] >= windows[0] - self.horizon)
            seen = memory.seen or is_counted
            started = memory.started or starts
            after[(seen, started, older, is_counted and self.horizon > 0)].append(k)
        self._memory[key] = frozenset(
            _Memory(seen, started, older | ({(identity, min(ks), max(ks))} if record else set()))
            for (seen, started, older, record), ks in after.items()
        )
        self._last[key] = max(t, self._last.get(key, t))
        self._account(p, outcomes)

        ks = {k for k, _, _ in outcomes}
        starts = {s for _, _, s in outcomes}
        return Answer(
            counted=required.pop() if len(required) == 1 else None,
            starts=starts.pop() if len(starts) == 1 else None,
            end=self.end(ks.pop()) if len(ks) == 1 else None,
            contradicted=contradicted,
        )

    def _account(self, p: Payload, outcomes: Sequence[tuple[int, bool, bool]]) -> None:
        pair = (p["customer"], p["content"])
        counted = [(k, starts) for k, c, starts in outcomes if c]
        if not counted:
            return
        always = len(counted) == len(outcomes)
        ks = {k for k, _, _ in outcomes}
        if always and len(ks) == 1:
            self._low[(self.end(ks.pop()), *pair)] += counted_row(p, all(s for _, s in counted))
        for k in {k for k, _ in counted}:
            starts = any(s for j, s in counted if j == k)
            self._high[(self.end(k), *pair)] += counted_row(p, starts)
        if always:
            self._total_low[pair] += counted_row(p, all(s for _, s in counted))
        self._total_high[pair] += counted_row(p, any(s for _, s in counted))

    def receive_all(self, t: float, payloads: Iterable[Payload]) -> Tally:
        """Apply the payloads of one request (single or batch) received at ``t``.

        Raises Uncertain if the rules allow more than one answer.
        """
        answers = [(p, self.receive(t, p)) for p in payloads]
        for p, answer in answers:
            if answer.counted is None or answer.starts is None:
                raise Uncertain(f"the rules allow more than one answer to {p!r} at {t}")
        return Tally(
            accepted=sum(1 for _, a in answers if a.counted),
            duplicates=sum(1 for _, a in answers if not a.counted),
            sessions=sum(1 for _, a in answers if a.starts),
        )

    # --- what stats must hold ----------------------------------------------------------

    def rows(self, until_end: float | None = None) -> dict[Key, Row]:
        """Every row (of the windows ending at or before ``until_end``), exactly.

        Raises Uncertain if the rules allow a row more than one value.
        """
        out = {}
        for key, high in self._high.items():
            if until_end is not None and key[0] > until_end:
                continue
            low = self._low.get(key, Row())
            if low != high:
                raise Uncertain(f"row {key} may hold anything between {low} and {high}")
            out[key] = high
        return out

    def bounds(self) -> Bounds:
        return Bounds(
            rows={key: (self._low.get(key, Row()), high) for key, high in self._high.items()},
            totals={
                pair: (self._total_low.get(pair, Row()), high)
                for pair, high in self._total_high.items()
            },
        )

    def ends(self) -> list[int]:
        """The window ends that have rows."""
        return sorted({key[0] for key in self._high})

    def window_totals(self, end: int) -> dict[str, int]:
        """What a flush of the whole window ending at ``end`` reports writing."""
        rows = [row for key, row in self.rows().items() if key[0] == end]
        total = sum(rows, Row())
        return {"rows": len(rows), **{f.name: getattr(total, f.name) for f in fields(Row)}}

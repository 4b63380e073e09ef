"""Group commit: requests in flight at once share calls, each gets its own answer.

``write`` here is a stand-in for the INGEST call: it answers each entry with a
value derived from it, and records how many calls ran at once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from payload_stats.ingest.group_commit import GroupCommit


class Writer:
    def __init__(self, pause: float = 0.002, fail_call: int = -1, fail_entry: int = -1) -> None:
        self.pause = pause
        self.fail_call = fail_call  # a call carrying this entry raises
        self.fail_entry = fail_entry  # this entry's own result is an error
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.groups: list[list[int]] = []

    def __call__(self, entries):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.groups.append(list(entries))
        try:
            time.sleep(self.pause)
            if self.fail_call in entries:
                raise ConnectionError("redis went away")
            return [
                ValueError(f"shard of {e}") if e == self.fail_entry else ("done", e)
                for e in entries
            ]
        finally:
            with self.lock:
                self.running -= 1


def one(entry: int) -> int:
    return 1


def test_every_request_gets_its_own_answer_in_one_call_at_a_time():
    writer = Writer()
    commit = GroupCommit(writer, limit=8, weight=one)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(commit.record, range(2000), timeout=60))
    assert answers == [("done", i) for i in range(2000)]
    written = sorted(e for group in writer.groups for e in group)
    assert written == list(range(2000))  # each entry in exactly one call
    assert writer.most_running == 1
    assert max(len(g) for g in writer.groups) <= 8
    assert len(writer.groups) < 2000  # requests in flight at once shared calls


def test_a_request_alone_goes_at_once():
    writer = Writer(pause=0)
    commit = GroupCommit(writer, weight=one)
    assert [commit.record(i) for i in range(3)] == [("done", 0), ("done", 1), ("done", 2)]
    assert writer.groups == [[0], [1], [2]]


def answers(commit: GroupCommit, entries: range, error: type[Exception]) -> list:
    """Each entry's answer, or the ``error`` it raised, recorded from 12 threads."""

    def record(entry):
        try:
            return commit.record(entry)
        except error as exc:
            return exc

    with ThreadPoolExecutor(12) as pool:
        return list(pool.map(record, entries, timeout=60))


def test_a_failed_call_fails_exactly_its_requests():
    writer = Writer(pause=0.005, fail_call=7)
    got = answers(GroupCommit(writer, limit=4, weight=one), range(40), ConnectionError)
    [failed] = [set(g) for g in writer.groups if 7 in g]
    assert {i for i, a in enumerate(got) if isinstance(a, ConnectionError)} == failed
    assert all(got[i] == ("done", i) for i in range(40) if i not in failed)


def test_an_error_for_one_entry_fails_that_request_alone():
    writer = Writer(pause=0.005, fail_entry=5)
    got = answers(GroupCommit(writer, limit=16, weight=one), range(30), ValueError)
    assert [str(a) if i == 5 else a for i, a in enumerate(got)] == [
        ("done", i) if i != 5 else "shard of 5" for i in range(30)
    ]


def test_a_call_carries_at_most_limit_payloads_and_always_one_entry():
    writer = Writer(pause=0.005)
    sizes = [400, 700, 300, 1500, 100, 600, 600]  # payloads per entry
    commit = GroupCommit(writer, limit=1000, weight=lambda i: sizes[i % len(sizes)])
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(commit.record, range(70), timeout=60))
    assert got == [("done", i) for i in range(70)]
    weights = [sum(sizes[i % len(sizes)] for i in g) for g in writer.groups]
    assert all(w <= 1000 or len(g) == 1 for w, g in zip(weights, writer.groups, strict=True))
    assert any(len(g) > 1 for g in writer.groups)  # calls were still shared
    assert max(weights) == 1500  # an entry over the limit goes alone

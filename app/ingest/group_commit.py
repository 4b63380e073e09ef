"""Group commit: a worker's requests in flight at the same moment share one Redis call.

The way databases commit many transactions with one log flush. A request
that finds no call under way makes one at once, alone: at low load nothing
waits. Requests that arrive while a call is under way queue; when it
returns, the first of them makes the next call for them (for as many as fit
in 1000 payloads). Under load the groups grow by themselves, and one INGEST
script call (one round trip, atomic as a whole) carries many requests'
payloads. Each request still gets its own answer, and a Redis error fails
exactly the requests of that call. On Redis Cluster ``write`` makes one
call per shard and returns, for a request whose call failed, the error
instead of its result: that request alone fails with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..buffer.ingest import Entry, Recorded
from .schema import MAX_BATCH

Write = Callable[[Sequence[Entry]], list[Recorded | BaseException]]


class _Waiter:
    __slots__ = ("entry", "_blocked", "result", "error", "leads")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        # Held from the start: wait() blocks until wake() releases it. A bare
        # lock, not a threading.Event, whose Condition costs a few more
        # microseconds of Python, and under load most requests wait once.
        self._blocked = threading.Lock()
        self._blocked.acquire()
        self.result: Recorded | None = None
        self.error: BaseException | None = None
        self.leads = False  # woken to make the next call, not with a result

    def wait(self) -> None:
        """Block until woken (at once if already woken); leave the waiter
        ready to be woken once more."""
        self._blocked.acquire()

    def wake(self) -> None:
        self._blocked.release()

    def outcome(self) -> Recorded:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _payloads(entry: Entry) -> int:
    return len(entry.payloads)


class GroupCommit:
    """Shares calls to ``write`` (all entries of a call in one round trip)
    between the threads of one process.

    A call carries queued entries, in order, while their ``weight`` (by
    default their payloads) adds up to at most ``limit``, and always at
    least one. A script call holds Redis for its whole run: the default,
    one full batch (1000 payloads), keeps a call to a few milliseconds of
    Redis time, so workers sending batches at once do not make every other
    request wait behind one call of thousands.
    """

    def __init__(
        self, write: Write, limit: int = MAX_BATCH, weight: Callable[[Entry], int] = _payloads
    ) -> None:
        self.write = write
        self.limit = limit
        self.weight = weight
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False  # a call is under way, or about to be

    def record(self, entry: Entry) -> Recorded:
        """Write ``entry`` (in some call) and return what it did.

        Raises whatever ``write`` raised for the call that carried it.
        """
        me = _Waiter(entry)
        with self._lock:
            self._queue.append(me)
            lead = not self._busy
            self._busy = True
        if not lead:
            me.wait()
            if not me.leads:
                return me.outcome()
        # A leader is first in the queue, so it is in the group it writes.
        self._lead()
        return me.outcome()

    def _lead(self) -> None:
        with self._lock:
            queue, weight = self._queue, self.weight
            total, end = weight(queue[0].entry), 1
            while end < len(queue):
                total += weight(queue[end].entry)
                if total > self.limit:
                    break
                end += 1
            group = queue[:end]
            del queue[:end]
        try:
            results = self.write([w.entry for w in group])
        except BaseException as exc:  # the whole call failed: so did each request in it
            for w in group:
                w.error = exc
        else:
            for w, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    w.error = result  # its shard call failed (Redis Cluster)
                else:
                    w.result = result
        with self._lock:
            after = self._queue[0] if self._queue else None
            self._busy = after is not None
        for w in group:
            w.wake()
        if after is not None:
            after.leads = True
            after.wake()

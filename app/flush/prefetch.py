"""Reading ahead: the next batches come from Redis while PostgreSQL takes this one.

The flush reads a snapshot from Redis and COPYs it into PostgreSQL batch by
batch; done in turn, each server waits for the other. Reader threads keep a
few batches ready instead, so the round trips overlap: two readers, so that
one waits on Redis while the other turns a reply into rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
A = TypeVar("A")


def prefetched_map(
    fn: Callable[[A], T], tasks: Iterable[A], workers: int = 2, depth: int = 4
) -> Iterator[T]:
    """``fn(task)`` for each task, in order, computed by ``workers`` threads at
    most ``depth`` tasks ahead (so memory stays bounded).

    An exception raised by ``fn`` is raised here, at its place in the order;
    stopping early cancels what has not started.
    """
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flush-read") as pool:
        try:
            for task in tasks:
                pending.append(pool.submit(fn, task))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

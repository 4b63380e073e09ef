"""Reading ahead: the next batches come from Redis while PostgreSQL takes this one.

The flush reads a snapshot from Redis and COPYs it into PostgreSQL batch by
batch; done in turn, each server waits for the other. A reader thread keeps
a few batches ready instead, so the two round trips overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def prefetched(source: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of ``source``, produced by a thread up to ``depth`` items ahead.

    An exception in ``source`` is raised here, at its place in the sequence.
    Stopping early (an exception in the consumer) stops the thread after at
    most ``depth`` more items.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((_DONE, None))
        except BaseException as exc:  # handed over to the consumer
            items.put((_DONE, exc))

    thread = threading.Thread(target=produce, name="flush-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)

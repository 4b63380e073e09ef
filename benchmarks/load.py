"""One load phase: a fixed duration and connection count against one URL.

``run_load`` uses wrk when it is installed (and not refused), else the
Python generator; both report a :class:`LoadResult`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LoadSpec:
    """What to send: single payloads or batches, at full speed or at ``rate``."""

    url: str  # the full URL, e.g. http://127.0.0.1:8123/stats
    duration: float
    connections: int
    batch: int = 0  # 0: one payload per request; n: a JSON array of n payloads
    rate: float | None = None  # requests/s for all connections together; None: max
    threads: int = 1  # wrk threads
    close: bool = False  # send "Connection: close": one TCP connection per request


@dataclass(frozen=True)
class LoadResult:
    loader: str  # "wrk" or "python"
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int  # socket errors and timeouts
    batch: int = 0
    slices: int = 1  # phases combined into this result (see ``combine``)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def payloads_per_s(self) -> float:
        return self.rps * (self.batch or 1)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rps"] = round(self.rps, 1)
        data["payloads_per_s"] = round(self.payloads_per_s, 1)
        return data


def combine(results: list[LoadResult]) -> LoadResult:
    """One result from slices of the same phase, interleaved with other servers' slices.

    Requests, seconds and errors add up; p50 and p99 are the median of the
    slices' (a burst of another process on the machine spoils one slice, not
    the figure).
    """

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    first = results[0]
    return LoadResult(
        loader=first.loader,
        requests=sum(r.requests for r in results),
        seconds=sum(r.seconds for r in results),
        p50_ms=median([r.p50_ms for r in results]),
        p99_ms=median([r.p99_ms for r in results]),
        non2xx=sum(r.non2xx for r in results),
        errors=sum(r.errors for r in results),
        batch=first.batch,
        slices=len(results),
    )


def run_load(spec: LoadSpec, loader: str = "auto") -> LoadResult:
    """Run one phase with ``loader`` ("auto", "wrk" or "python")."""
    from . import load_python, load_wrk

    if loader == "python" or (loader == "auto" and not load_wrk.available()):
        return load_python.run(spec)
    return load_wrk.run(spec)

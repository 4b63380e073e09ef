"""The ``payload-stats live`` terminal view: the open window's top rows (rich)."""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..buffer.live import LiveRead, LiveRow, top_rows
from ..config import Config
from ..windows import window_end, window_index


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def render(rows: list[LiveRow] | LiveRead, config: Config, now: float, limit: int) -> Group:
    """The table of the window open at ``now``: rows by traffic, most first."""
    read = rows if isinstance(rows, LiveRead) else None
    if read is not None:
        rows = read.rows
    length = config.window_seconds
    k = window_index(now, length)
    elapsed = max(1.0, now - k * length)
    rows = sorted(rows, key=lambda r: r.cdn + r.p2p, reverse=True)
    end = time.strftime("%H:%M:%S", time.gmtime(window_end(k, length)))
    table = Table(title=f"payload-stats: window ending {end} UTC ({elapsed:.0f}s of {length}s)")
    for name in ("customer", "content"):
        table.add_column(name, overflow="fold")
    for name in ("cdn", "p2p", "p2p share", "sessions", "payloads/s", "viewers"):
        table.add_column(name, justify="right")
    for r in rows[:limit]:
        share = r.p2p_share
        table.add_row(
            r.customer,
            r.content,
            _bytes(r.cdn),
            _bytes(r.p2p),
            "-" if share is None else f"{100 * share:.1f}%",
            str(r.sessions),
            f"{r.payloads / elapsed:.1f}",
            # Average concurrent viewers so far: watch time over the time elapsed.
            f"{r.watch_ms / (elapsed * 1000):.1f}",
        )
    total = len(rows) if read is None else read.matched
    note = f"{min(limit, len(rows))} of {total} customer/content pairs"
    if read is not None and not read.complete:
        note += (
            f" (partial: read {read.counters_read:,} of {read.counters:,} counters, "
            "STATS_LIVE_MAX_KEYS)"
        )
    footer = Text(note, style="dim")
    return Group(table, footer)


def run(
    redis: Redis,
    config: Config,
    *,
    once: bool,
    limit: int,
    customer: str | None = None,
    content: str | None = None,
    clock: Callable[[], float] = time.time,
    console: Console | None = None,
) -> None:
    """Print the table once, or refresh it every second until Ctrl-C.

    Raises redis.RedisError when Redis cannot be read.
    """
    console = console or Console()

    def frame() -> Group:
        now = clock()
        k = window_index(now, config.window_seconds)
        found = top_rows(
            redis, config, customer=customer, content=content, only_window=k, limit=limit
        )
        return render(found, config, now, limit)

    if once:
        console.print(frame())
        return
    with Live(frame(), console=console, refresh_per_second=4) as view:
        try:
            while True:
                time.sleep(1)
                view.update(frame())
        except KeyboardInterrupt:
            pass

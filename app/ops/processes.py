"""Running the web, scheduler (and demo) processes side by side for ``payload-stats serve``.

Ctrl-C in a terminal sends SIGINT to every process of the foreground process
group. The children therefore run in sessions of their own: only ``serve``
gets the terminal's signals, and it stops each child with one SIGTERM, the
clean stop (gunicorn drains its workers, the scheduler finishes its flush), so
a Ctrl-C at any moment, even while gunicorn boots its workers, ends without a
worker killed half-way. A child whose ``serve`` dies (SIGKILL) gets SIGTERM from
the kernel (Linux ``PR_SET_PDEATHSIG``), so none outlives it.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 30
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _as_child() -> None:
    """In the child, before exec: SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def spawn(command: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in a session of its own (no terminal signals), stopped with us."""
    return subprocess.Popen(
        list(command),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_as_child,  # noqa: PLW1509 (one thread here: serve has not started any)
    )


def _name(command: Sequence[str]) -> str:
    # [python, -m, payload_stats, web, ...] -> "web ..."
    return " ".join(command[3:]) if len(command) > 3 else " ".join(command)


def supervise(
    commands: Sequence[Sequence[str]],
    env: Mapping[str, str] | None = None,
    *,
    tick: Callable[[], None] | None = None,
    stopped: Callable[[], bool] | None = None,
) -> int:
    """Start every command, stop them all when one exits or on SIGTERM/SIGINT.

    Children get SIGTERM (a clean stop) and SIGKILL after STOP_TIMEOUT_SECONDS.
    ``tick`` is called about ten times a second while they run (``serve`` uses
    it to announce the address once it answers); ``stopped`` tells of a stop
    requested before this was called. Returns 0 after a requested stop, else
    the exit code of the child that stopped on its own.
    """
    stop_requested_at: float | None = None
    exit_code = 0
    procs: list[subprocess.Popen] = []

    def stop_all() -> None:
        nonlocal stop_requested_at
        if stop_requested_at is None:
            stop_requested_at = time.monotonic()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        if stop_requested_at is None:
            logger.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop_all()

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        for cmd in commands:
            if stop_requested_at is not None:
                break  # a signal came while the others started
            procs.append(spawn(cmd, env))
        while any(p.poll() is None for p in procs):
            if stop_requested_at is None and stopped is not None and stopped():
                stop_all()
            for p, cmd in zip(procs, commands):  # noqa: B905 (fewer procs after an early stop)
                code = p.poll()
                if code is not None and stop_requested_at is None:
                    logger.error("process_exited", extra={"command": _name(cmd), "code": code})
                    exit_code = code or 1
                    stop_all()
            if (
                stop_requested_at is not None
                and time.monotonic() - stop_requested_at > STOP_TIMEOUT_SECONDS
            ):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            if tick is not None and stop_requested_at is None:
                tick()
            time.sleep(0.1)
    finally:
        for p in procs:  # only if this loop itself failed: never leave a child behind
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return exit_code


class StopFlag:
    """SIGINT/SIGTERM handlers that only note the request (no KeyboardInterrupt):
    ``serve`` looks at it between its start steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _note(self, signum: int, frame: object) -> None:
        if self.signal is None:
            self.signal = signum

    def install(self) -> StopFlag:
        self._previous = {s: signal.signal(s, self._note) for s in STOP_SIGNALS}
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous = {}


def exit_code_for(signum: int) -> int:
    """The shell's convention for a process stopped by ``signum`` (130 for SIGINT)."""
    return 128 + signum

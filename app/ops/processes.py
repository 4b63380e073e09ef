"""Running the web and scheduler processes side by side for ``payload-stats serve``."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 30


def supervise(commands: Sequence[Sequence[str]], env: Mapping[str, str] | None = None) -> int:
    """Start every command, stop them all when one exits or on SIGTERM/SIGINT.

    Children get SIGTERM (a clean stop: gunicorn drains requests, the
    scheduler finishes its flush) and SIGKILL after STOP_TIMEOUT_SECONDS.
    Returns 0 after a requested stop, else the exit code of the child that
    stopped on its own.
    """
    procs = [
        subprocess.Popen(list(cmd), env=dict(env) if env is not None else None) for cmd in commands
    ]
    stop_requested_at: float | None = None
    exit_code = 0

    def stop_all() -> None:
        nonlocal stop_requested_at
        if stop_requested_at is None:
            stop_requested_at = time.monotonic()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        logger.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop_all()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(p.poll() is None for p in procs):
            for p, cmd in zip(procs, commands, strict=True):
                code = p.poll()
                if code is not None and stop_requested_at is None:
                    logger.error(
                        "process_exited", extra={"command": " ".join(cmd[2:]), "code": code}
                    )
                    exit_code = code or 1
                    stop_all()
            if (
                stop_requested_at is not None
                and time.monotonic() - stop_requested_at > STOP_TIMEOUT_SECONDS
            ):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return exit_code

"""Failpoints: named steps of a flush where a test can make the process die.

``STATS_FAILPOINT=after_freeze|mid_batch|after_commit`` makes ``flush`` and
``scheduler`` exit (code 17) at that step, as a crash would. Production
code passes ``no_failpoint``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

Failpoint = Callable[[str], None]

EXIT_CODE = 17


def no_failpoint(name: str) -> None:
    """The production failpoint: does nothing."""


def exit_at(chosen: str) -> Failpoint:
    """A failpoint that kills the process at ``chosen``, as a crash would."""

    def failpoint(name: str) -> None:
        if name == chosen:
            logging.shutdown()
            os._exit(EXIT_CODE)

    return failpoint


def from_config(chosen: str | None) -> Failpoint:
    """The failpoint that ``STATS_FAILPOINT`` asks for, or ``no_failpoint``."""
    return exit_at(chosen) if chosen else no_failpoint

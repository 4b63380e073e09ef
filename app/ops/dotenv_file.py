"""``.env`` for the command line: settings read from a file in the current directory.

``payload-stats`` reads ``.env`` (or the file ``STATS_ENV_FILE`` names) before
anything else, with python-dotenv; a variable already in the process
environment wins over the file. The processes ``serve`` starts inherit the
result. ``STATS_ENV_FILE=/dev/null`` reads nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

DEFAULT = ".env"


class EnvFileError(RuntimeError):
    """The file STATS_ENV_FILE names cannot be read; the message is one line."""


def load(environ: dict[str, str] | None = None) -> Path | None:
    """Add the file's variables that ``environ`` (default ``os.environ``) lacks.

    Returns the file read, None when there was none. Raises EnvFileError when
    STATS_ENV_FILE names a file that cannot be read.
    """
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    named = environ.get("STATS_ENV_FILE", "").strip()
    path = Path(named or DEFAULT)
    if not named and not path.is_file():
        return None
    try:
        with path.open(encoding="utf-8") as handle:
            values = dotenv_values(stream=handle, interpolate=True)
    except OSError as exc:
        raise EnvFileError(f"STATS_ENV_FILE: cannot read {path}: {exc.strerror}") from None
    for name, value in values.items():
        if value is not None and name not in environ:
            environ[name] = value
    return path

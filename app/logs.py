"""Logging: event names plus structured fields, as text or one JSON object per line.

Code logs ``logger.info("flush", extra={"rows": 3, ...})``; the formatter
prints the event and every extra field. JSON lines are python-json-logger's.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .config import Config

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def one_line(exc: BaseException) -> str:
    """An exception as one log- or terminal-friendly line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={v}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(JsonFormatter):
    """One object per line: timestamp, level, logger, event, then the extra fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(message)s",
            rename_fields={"message": "event", "exc_info": "exception"},
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["timestamp"] = _timestamp(record)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)


class _Handler(logging.StreamHandler):
    """Marks the handler this module installed, so configuring twice replaces it."""


def configure(config: Config) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(sys.stderr)
    handler.setFormatter(JSONFormatter() if config.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(config.log_level)

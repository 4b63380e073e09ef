"""Configuration: every environment variable, typed and validated once.

``Config.from_env()`` is the only place the process environment is read for
settings. Invalid values raise :class:`ConfigError` with a one-line message
that names the variable, so a misconfigured process fails at start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

FAILPOINTS = ("after_freeze", "mid_batch", "after_commit")


class ConfigError(ValueError):
    """A configuration variable is missing or invalid."""


@dataclass(frozen=True)
class Config:
    redis_url: str | None = None
    database_url: str | None = None
    window_seconds: int = 300
    flush_grace_seconds: float = 5.0
    flush_interval_seconds: float = 10.0
    shards: int = 8
    dedup_seconds: int | None = None  # None: two windows
    key_prefix: str = "ps"
    max_body_bytes: int = 1024 * 1024
    redis_timeout_seconds: float = 1.0
    flush_batch_size: int = 1000
    flush_lock_seconds: float = 60.0
    data_dir: str = "var"
    bind: str = "127.0.0.1:8000"
    web_workers: int = 0  # 0: one per CPU core
    web_threads: int = 8
    log_level: str = "INFO"
    log_format: str = "text"
    retention_days: int = 365
    api_token: str | None = field(default=None, repr=False)
    ingest_token: str | None = field(default=None, repr=False)
    failpoint: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from ``environ`` (default ``os.environ``).

        Raises ConfigError on the first invalid variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (attr, parse) in _VARIABLES.items():
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[attr] = parse(raw.strip())
            except ValueError as exc:
                # URLs and tokens may hold passwords: never echo them.
                shown = "" if name in _SECRET else f" (got {raw!r})"
                raise ConfigError(f"{name}: {exc}{shown}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (used by tests and the embedded launcher)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return type(self)(**current)

    def __post_init__(self) -> None:
        if self.dedup_seconds is not None and self.dedup_seconds > 2 * self.window_seconds:
            raise ConfigError(
                "STATS_DEDUP_SECONDS: must be at most 2 x STATS_WINDOW_SECONDS "
                f"({2 * self.window_seconds}), as long as token memory lasts "
                f"(got {self.dedup_seconds})"
            )

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    @property
    def dedup_windows(self) -> int:
        """The retry horizon in whole windows (rounded up), 0 when off."""
        seconds = 2 * self.window_seconds if self.dedup_seconds is None else self.dedup_seconds
        return -(-seconds // self.window_seconds)


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bounds}")
        return value

    return parse


def _number(low: float, *, exclusive: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if value < low or (exclusive and value == low):
            raise ValueError(f"must be {'>' if exclusive else '>='} {low:g}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme = raw.split("://", 1)[0] if "://" in raw else ""
        if scheme not in schemes:
            starts = " or ".join(s + "://" for s in schemes)
            raise ValueError(f"must be a URL starting with {starts}")
        return raw

    return parse


def _key_prefix(raw: str) -> str:
    # The hash tag {shard} must be the first braces in every key name.
    if any(c in raw for c in "{}") or any(c.isspace() for c in raw):
        raise ValueError("must not contain braces or white space")
    return raw


def _bind(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT")
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _log_format(raw: str) -> str:
    if raw not in ("text", "json"):
        raise ValueError("must be text or json")
    return raw


def _failpoint(raw: str) -> str:
    if raw not in FAILPOINTS:
        raise ValueError(f"must be one of {', '.join(FAILPOINTS)}")
    return raw


_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "REDIS_URL": ("redis_url", _url("redis", "rediss", "unix")),
    "DATABASE_URL": ("database_url", _url("postgresql", "postgres")),
    "STATS_WINDOW_SECONDS": ("window_seconds", _integer(1, 86400)),
    "STATS_FLUSH_GRACE_SECONDS": ("flush_grace_seconds", _number(0)),
    "STATS_FLUSH_INTERVAL_SECONDS": ("flush_interval_seconds", _number(0, exclusive=True)),
    "STATS_SHARDS": ("shards", _integer(1, 16384)),
    "STATS_DEDUP_SECONDS": ("dedup_seconds", _integer(0, 2 * 86400)),
    "STATS_KEY_PREFIX": ("key_prefix", _key_prefix),
    "STATS_MAX_BODY_BYTES": ("max_body_bytes", _integer(1024)),
    "STATS_REDIS_TIMEOUT_SECONDS": ("redis_timeout_seconds", _number(0, exclusive=True)),
    "STATS_FLUSH_BATCH_SIZE": ("flush_batch_size", _integer(1, 100_000)),
    "STATS_FLUSH_LOCK_SECONDS": ("flush_lock_seconds", _number(1)),
    "STATS_DATA_DIR": ("data_dir", str),
    "STATS_BIND": ("bind", _bind),
    "STATS_WEB_WORKERS": ("web_workers", _integer(0, 1024)),
    "STATS_WEB_THREADS": ("web_threads", _integer(1, 256)),
    "STATS_LOG_LEVEL": ("log_level", _log_level),
    "STATS_LOG_FORMAT": ("log_format", _log_format),
    "STATS_RETENTION_DAYS": ("retention_days", _integer(0)),
    "STATS_API_TOKEN": ("api_token", str),
    "STATS_INGEST_TOKEN": ("ingest_token", str),
    "STATS_FAILPOINT": ("failpoint", _failpoint),
}

_SECRET = {"REDIS_URL", "DATABASE_URL", "STATS_API_TOKEN", "STATS_INGEST_TOKEN"}

#: The variables ``Config.from_env`` reads, for docs and deployment checks.
VARIABLES = tuple(_VARIABLES)

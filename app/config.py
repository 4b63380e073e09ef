"""Configuration: every environment variable, typed and validated once.

``Config.from_env()`` is the only place the process environment is read for
settings; the parsing is environs' (marshmallow fields and validators).
Invalid values raise :class:`ConfigError` with a one-line message that names
the variable, so a misconfigured process fails at start. ``.env.example``
documents every variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from environs import Env, EnvValidationError
from marshmallow import ValidationError
from marshmallow.validate import OneOf, Range

FAILPOINTS = ("after_freeze", "mid_batch", "after_commit")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A configuration variable is missing or invalid."""


@dataclass(frozen=True)
class Config:
    redis_url: str | None = None
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis Cluster
    redis_wait_replicas: int = 0  # on a cluster: replicas that must hold a write before 2xx
    database_url: str | None = None
    window_seconds: int = 300
    flush_grace_seconds: float = 5.0
    flush_interval_seconds: float = 10.0
    shards: int = 8
    dedup_seconds: int | None = None  # None: two windows
    key_prefix: str = "ps"
    max_body_bytes: int = 1024 * 1024
    redis_timeout_seconds: float = 1.0
    redis_memory_ready_ratio: float = 0.9
    flush_batch_size: int = 1000
    flush_chunk_rows: int = 50_000
    flush_lock_seconds: float = 60.0
    data_dir: str = "var"
    bind: str = "127.0.0.1:8000"
    web_workers: int = 0  # 0: one per CPU core
    web_threads: int = 16
    web_header_timeout_seconds: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"
    retention_days: int = 365
    pg_statement_timeout_ms: int = 5000
    pg_lock_timeout_ms: int = 1000
    flush_statement_timeout_ms: int = 12000
    read_concurrency: int = 0  # 0: half of web_threads, at most 4
    live_max_keys: int = 20000
    partition_ahead_days: int = 7
    api_token: str | None = field(default=None, repr=False)
    ingest_token: str | None = field(default=None, repr=False)
    failpoint: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from ``environ`` (default ``os.environ``).

        A variable set to a blank value counts as unset, except the tokens:
        a blank token is refused rather than read as "no authentication".
        Raises ConfigError naming the first invalid variable.
        """
        source = os.environ if environ is None else environ
        for name in _TOKENS:
            raw = source.get(name)
            if raw is not None and not raw.strip():
                raise ConfigError(_BLANK_TOKEN.format(name=name))
        env = _Env(source)
        defaults = cls()
        values = {
            attr: getattr(env, kind)(name, getattr(defaults, attr), **options)
            for name, (attr, kind, options) in _VARIABLES.items()
        }
        try:
            env.seal()
        except EnvValidationError as exc:
            raise ConfigError(_one_line(exc.error_messages, env)) from None
        values["log_level"] = values["log_level"].upper()
        return cls(**values)

    def __post_init__(self) -> None:
        for name, value in (
            ("STATS_API_TOKEN", self.api_token),
            ("STATS_INGEST_TOKEN", self.ingest_token),
        ):
            if value is not None and not value.strip():
                raise ConfigError(_BLANK_TOKEN.format(name=name))
        if self.web_threads > 1 and self.read_concurrency >= self.web_threads:
            raise ConfigError(
                "STATS_READ_CONCURRENCY: must be less than STATS_WEB_THREADS "
                f"({self.web_threads}), so reads never take every thread "
                f"(got {self.read_concurrency})"
            )
        if self.redis_cluster:
            self._check_cluster()
        elif self.redis_wait_replicas:
            raise ConfigError(
                "STATS_REDIS_WAIT_REPLICAS: only with STATS_REDIS_CLUSTER=1 "
                f"(got {self.redis_wait_replicas})"
            )
        if self.dedup_seconds is not None and self.dedup_seconds > 2 * self.window_seconds:
            raise ConfigError(
                "STATS_DEDUP_SECONDS: must be at most 2 x STATS_WINDOW_SECONDS "
                f"({2 * self.window_seconds}), as long as token memory lasts "
                f"(got {self.dedup_seconds})"
            )

    def _check_cluster(self) -> None:
        if self.dedup_seconds == 0:
            # A batch spanning shards is written per shard on a cluster; a batch
            # resent after a partial failure counts its written items once only
            # because they are recognised as retries (docs/payload.md, "Batches").
            raise ConfigError(
                "STATS_DEDUP_SECONDS: 0 cannot be used with STATS_REDIS_CLUSTER=1: a batch "
                "resent after some shards failed would count its written payloads twice"
            )
        url = self.redis_url or ""
        if url.startswith("unix://"):
            raise ConfigError(
                "REDIS_URL: STATS_REDIS_CLUSTER=1 needs a redis:// or rediss:// URL of a node"
            )
        db = url.split("://", 1)[-1].partition("?")[0].partition("/")[2]
        if db not in ("", "0"):
            raise ConfigError(
                f"REDIS_URL: a Redis Cluster has only database 0 (the URL names database {db!r})"
            )

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    @property
    def retry_memory_bytes(self) -> int:
        """Bytes of durations a session's retry memory keeps per window: room for
        four times the payloads of a device sending every 30 s, and at least 600
        (some 70 durations). Past it, docs/retries.md "Bounds" applies."""
        return max(600, 32 * -(-self.window_seconds // 30))

    @property
    def read_slots(self) -> int:
        """Concurrent GET /stats and /stats/live requests per web worker.

        By default at most 4, so a worker never holds more than 4 PostgreSQL
        connections for reads, however many threads it has for devices.
        """
        if self.read_concurrency:
            return self.read_concurrency
        return max(1, min(4, self.web_threads // 2))

    @property
    def flush_pg_timeouts_ms(self) -> tuple[int, int]:
        """(statement, lock) timeouts of the flush's and retention's connections.

        Both are capped at a fifth of STATS_FLUSH_LOCK_SECONDS. The flusher
        extends its Redis lock between batches and between the long statements
        of each chunk's upsert; between two extensions it runs at most three
        statements (the chunk's totals, the pairs it remembers, the next batch's
        COPY; or claim, staging, COPY), so with each bounded by a fifth
        of the TTL a flush stuck on PostgreSQL gives up, and releases the lock,
        before the lock can expire.
        """
        cap = max(1, int(self.flush_lock_seconds * 1000 / 5))
        return min(self.flush_statement_timeout_ms, cap), min(self.pg_lock_timeout_ms, cap)

    @property
    def dedup_windows(self) -> int:
        """The retry horizon in whole windows (rounded up), 0 when off."""
        seconds = 2 * self.window_seconds if self.dedup_seconds is None else self.dedup_seconds
        return -(-seconds // self.window_seconds)


class _Env(Env):
    """environs over a given mapping, with blank values counting as unset.

    environs reads ``os.environ`` itself; its value lookup is overridden so
    that tests and ``--bind`` checks can pass a mapping of their own.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(eager=False)
        self.source = environ

    def _get_value(self, env_key: str, default: Any) -> Any:
        raw = self.source.get(env_key)
        if raw is None or not raw.strip():
            return default
        return raw.strip()


def _one_line(errors: Mapping[str, Any], env: _Env) -> str:
    name = next(iter(errors))
    messages = errors[name]
    text = " ".join(messages) if isinstance(messages, list) else str(messages)
    # URLs and tokens may hold passwords: never echo them.
    shown = "" if name in _SECRET else f" (got {env.source.get(name, '').strip()!r})"
    return f"{name}: {text.rstrip('.')}{shown}"


def _url(*schemes: str) -> Callable[[str], None]:
    def check(raw: str) -> None:
        scheme = raw.split("://", 1)[0] if "://" in raw else ""
        if scheme not in schemes:
            starts = " or ".join(s + "://" for s in schemes)
            raise ValidationError(f"must be a URL starting with {starts}")

    return check


def _key_prefix(raw: str) -> None:
    # The hash tag {shard} must be the first braces in every key name.
    if any(c in raw for c in "{}") or any(c.isspace() for c in raw):
        raise ValidationError("must not contain braces or white space")


def check_bind(raw: str) -> None:
    """Raise ValidationError unless ``raw`` is HOST:PORT."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError("must be HOST:PORT")


def _log_level(raw: str) -> None:
    if raw.upper() not in LOG_LEVELS:
        raise ValidationError(f"must be one of {', '.join(LOG_LEVELS)}")


def _positive(raw: float) -> None:
    if not raw > 0:
        raise ValidationError("must be > 0")


def _finite(raw: float) -> None:
    if raw != raw or raw in (float("inf"), float("-inf")):
        raise ValidationError("must be a finite number")


_NUMBER = {"allow_nan": True}  # NaN and infinities get our own message, not a parse error

# Environment variable -> (Config attribute, environs parser, its options).
_VARIABLES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "REDIS_URL": ("redis_url", "str", {"validate": _url("redis", "rediss", "unix")}),
    "STATS_REDIS_CLUSTER": ("redis_cluster", "bool", {}),
    "STATS_REDIS_WAIT_REPLICAS": ("redis_wait_replicas", "int", {"validate": Range(0, 16)}),
    "DATABASE_URL": ("database_url", "str", {"validate": _url("postgresql", "postgres")}),
    "STATS_WINDOW_SECONDS": ("window_seconds", "int", {"validate": Range(1, 86400)}),
    "STATS_FLUSH_GRACE_SECONDS": (
        "flush_grace_seconds",
        "float",
        {**_NUMBER, "validate": [_finite, Range(0)]},
    ),
    "STATS_FLUSH_INTERVAL_SECONDS": (
        "flush_interval_seconds",
        "float",
        {**_NUMBER, "validate": [_finite, _positive]},
    ),
    "STATS_SHARDS": ("shards", "int", {"validate": Range(1, 16384)}),
    "STATS_DEDUP_SECONDS": ("dedup_seconds", "int", {"validate": Range(0, 2 * 86400)}),
    "STATS_KEY_PREFIX": ("key_prefix", "str", {"validate": _key_prefix}),
    "STATS_MAX_BODY_BYTES": ("max_body_bytes", "int", {"validate": Range(1024)}),
    "STATS_REDIS_TIMEOUT_SECONDS": (
        "redis_timeout_seconds",
        "float",
        {**_NUMBER, "validate": [_finite, _positive]},
    ),
    "STATS_REDIS_MEMORY_READY_RATIO": (
        "redis_memory_ready_ratio",
        "float",
        {**_NUMBER, "validate": [_finite, Range(0, 1)]},
    ),
    "STATS_FLUSH_BATCH_SIZE": ("flush_batch_size", "int", {"validate": Range(1, 100_000)}),
    "STATS_FLUSH_CHUNK_ROWS": ("flush_chunk_rows", "int", {"validate": Range(1, 10_000_000)}),
    "STATS_FLUSH_LOCK_SECONDS": (
        "flush_lock_seconds",
        "float",
        {**_NUMBER, "validate": [_finite, Range(1)]},
    ),
    "STATS_DATA_DIR": ("data_dir", "str", {}),
    "STATS_BIND": ("bind", "str", {"validate": check_bind}),
    "STATS_WEB_WORKERS": ("web_workers", "int", {"validate": Range(0, 1024)}),
    "STATS_WEB_THREADS": ("web_threads", "int", {"validate": Range(1, 256)}),
    "STATS_WEB_HEADER_TIMEOUT_SECONDS": (
        "web_header_timeout_seconds",
        "float",
        {**_NUMBER, "validate": [_finite, Range(0.1, 3600)]},
    ),
    "STATS_LOG_LEVEL": ("log_level", "str", {"validate": _log_level}),
    "STATS_LOG_FORMAT": ("log_format", "str", {"validate": OneOf(("text", "json"))}),
    "STATS_RETENTION_DAYS": ("retention_days", "int", {"validate": Range(0)}),
    "STATS_PG_STATEMENT_TIMEOUT_MS": (
        "pg_statement_timeout_ms",
        "int",
        {"validate": Range(1, 3_600_000)},
    ),
    "STATS_PG_LOCK_TIMEOUT_MS": ("pg_lock_timeout_ms", "int", {"validate": Range(1, 3_600_000)}),
    "STATS_FLUSH_STATEMENT_TIMEOUT_MS": (
        "flush_statement_timeout_ms",
        "int",
        {"validate": Range(1, 3_600_000)},
    ),
    "STATS_READ_CONCURRENCY": ("read_concurrency", "int", {"validate": Range(0, 256)}),
    "STATS_LIVE_MAX_KEYS": ("live_max_keys", "int", {"validate": Range(100, 10_000_000)}),
    "STATS_PARTITION_AHEAD_DAYS": ("partition_ahead_days", "int", {"validate": Range(1, 366)}),
    "STATS_API_TOKEN": ("api_token", "str", {}),
    "STATS_INGEST_TOKEN": ("ingest_token", "str", {}),
    "STATS_FAILPOINT": ("failpoint", "str", {"validate": OneOf(FAILPOINTS)}),
}

_TOKENS = ("STATS_API_TOKEN", "STATS_INGEST_TOKEN")
_BLANK_TOKEN = (
    "{name}: must not be empty or blank (unset it to leave these endpoints open; "
    "a blank token would turn authentication off)"
)

_SECRET = {"REDIS_URL", "DATABASE_URL", "STATS_API_TOKEN", "STATS_INGEST_TOKEN"}

#: The variables ``Config.from_env`` reads, for docs and deployment checks.
VARIABLES = tuple(_VARIABLES)

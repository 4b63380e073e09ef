"""Config.from_env: defaults, typed parsing, and one-line errors that name the variable.

Every test passes an explicit mapping, so nothing here depends on the
environment the tests run in (except the one test of the ``os.environ`` default).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from payload_stats.config import VARIABLES, Config, ConfigError

# Every variable set to a non-default value, and the Config it must give.
ALL_SET = {
    "REDIS_URL": "redis://cache.internal:6380/0",
    "STATS_REDIS_CLUSTER": "1",
    "STATS_REDIS_WAIT_REPLICAS": "1",
    "DATABASE_URL": "postgresql://stats@db.internal:5433/stats",
    "STATS_WINDOW_SECONDS": "60",
    "STATS_FLUSH_GRACE_SECONDS": "2.5",
    "STATS_FLUSH_INTERVAL_SECONDS": "3",
    "STATS_SHARDS": "16",
    "STATS_DEDUP_SECONDS": "90",
    "STATS_KEY_PREFIX": "stats-eu",
    "STATS_MAX_BODY_BYTES": "4096",
    "STATS_REDIS_TIMEOUT_SECONDS": "0.25",
    "STATS_REDIS_MEMORY_READY_RATIO": "0.75",
    "STATS_FLUSH_BATCH_SIZE": "250",
    "STATS_FLUSH_CHUNK_ROWS": "20000",
    "STATS_FLUSH_LOCK_SECONDS": "30",
    "STATS_BIND": "0.0.0.0:9000",
    "STATS_WEB_WORKERS": "4",
    "STATS_WEB_THREADS": "16",
    "STATS_WEB_HEADER_TIMEOUT_SECONDS": "2.5",
    "STATS_LOG_LEVEL": "debug",
    "STATS_LOG_FORMAT": "json",
    "STATS_RETENTION_DAYS": "30",
    "STATS_PG_STATEMENT_TIMEOUT_MS": "2500",
    "STATS_PG_LOCK_TIMEOUT_MS": "500",
    "STATS_FLUSH_STATEMENT_TIMEOUT_MS": "9000",
    "STATS_READ_CONCURRENCY": "3",
    "STATS_LIVE_MAX_KEYS": "5000",
    "STATS_PARTITION_AHEAD_DAYS": "3",
    "STATS_API_TOKEN": "api-secret",
    "STATS_INGEST_TOKEN": "ingest-secret",
    "STATS_FAILPOINT": "mid_batch",
    "STATS_DATA_DIR": "/srv/payload-stats",
}

ALL_SET_EXPECTED = {
    "redis_url": "redis://cache.internal:6380/0",
    "redis_cluster": True,
    "redis_wait_replicas": 1,
    "database_url": "postgresql://stats@db.internal:5433/stats",
    "window_seconds": 60,
    "flush_grace_seconds": 2.5,
    "flush_interval_seconds": 3.0,
    "shards": 16,
    "dedup_seconds": 90,
    "key_prefix": "stats-eu",
    "max_body_bytes": 4096,
    "redis_timeout_seconds": 0.25,
    "redis_memory_ready_ratio": 0.75,
    "flush_batch_size": 250,
    "flush_chunk_rows": 20_000,
    "flush_lock_seconds": 30.0,
    "bind": "0.0.0.0:9000",
    "web_workers": 4,
    "web_threads": 16,
    "web_header_timeout_seconds": 2.5,
    "log_level": "DEBUG",
    "log_format": "json",
    "retention_days": 30,
    "pg_statement_timeout_ms": 2500,
    "pg_lock_timeout_ms": 500,
    "flush_statement_timeout_ms": 9000,
    "read_concurrency": 3,
    "live_max_keys": 5000,
    "partition_ahead_days": 3,
    "api_token": "api-secret",
    "ingest_token": "ingest-secret",
    "failpoint": "mid_batch",
    "data_dir": "/srv/payload-stats",
}


def test_defaults() -> None:
    config = Config.from_env({})

    assert config == Config()
    assert config.redis_url is None
    assert config.redis_cluster is False
    assert config.redis_wait_replicas == 0
    assert config.database_url is None
    assert config.window_seconds == 300
    assert config.window_ms == 300_000
    assert config.flush_grace_seconds == 5.0
    assert config.flush_interval_seconds == 10.0
    assert config.shards == 8
    assert config.dedup_seconds is None
    assert config.dedup_windows == 2
    assert config.key_prefix == "ps"
    assert config.max_body_bytes == 1024 * 1024
    assert config.flush_batch_size == 1000
    assert config.flush_chunk_rows == 50_000
    assert config.bind == "127.0.0.1:8000"
    assert config.log_level == "INFO"
    assert config.log_format == "text"
    assert config.retention_days == 365
    assert config.partition_ahead_days == 7
    assert config.api_token is None
    assert config.ingest_token is None
    assert config.failpoint is None
    assert config.data_dir == "var"


def test_the_full_example_covers_every_variable() -> None:
    # A new variable must be added to ALL_SET, so it gets parsed here too.
    assert set(ALL_SET) == set(VARIABLES)


def test_every_variable_is_parsed_and_typed() -> None:
    config = Config.from_env(ALL_SET)

    for attr, expected in ALL_SET_EXPECTED.items():
        value = getattr(config, attr)
        assert value == expected, attr
        assert type(value) is type(expected), attr


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATS_SHARDS", "3")

    assert Config.from_env().shards == 3


def test_surrounding_white_space_is_ignored() -> None:
    config = Config.from_env({"STATS_WINDOW_SECONDS": " 60\n", "STATS_KEY_PREFIX": "\tabc "})

    assert config.window_seconds == 60
    assert config.key_prefix == "abc"


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_blank_values_mean_default(blank: str) -> None:
    # Except the tokens: a blank token is an error (tests/unit/test_config_availability.py).
    settings = {name: blank for name in VARIABLES if not name.endswith("_TOKEN")}
    assert Config.from_env(settings) == Config()


@pytest.mark.parametrize(
    ("name", "raw", "attr", "expected"),
    [
        ("STATS_WINDOW_SECONDS", "1", "window_seconds", 1),
        ("STATS_WINDOW_SECONDS", "86400", "window_seconds", 86400),
        ("STATS_SHARDS", "1", "shards", 1),
        ("STATS_SHARDS", "16384", "shards", 16384),
        ("STATS_FLUSH_GRACE_SECONDS", "0", "flush_grace_seconds", 0.0),
        ("STATS_MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
        ("STATS_FLUSH_BATCH_SIZE", "1", "flush_batch_size", 1),
        ("STATS_FLUSH_BATCH_SIZE", "100000", "flush_batch_size", 100_000),
        ("STATS_FLUSH_LOCK_SECONDS", "1", "flush_lock_seconds", 1.0),
        ("STATS_WEB_WORKERS", "0", "web_workers", 0),
        ("STATS_DEDUP_SECONDS", "0", "dedup_seconds", 0),
        ("STATS_DEDUP_SECONDS", "600", "dedup_seconds", 600),
        ("STATS_WEB_WORKERS", "1024", "web_workers", 1024),
        ("STATS_WEB_THREADS", "1", "web_threads", 1),
        ("STATS_WEB_THREADS", "256", "web_threads", 256),
        ("REDIS_URL", "rediss://cache:6380/0", "redis_url", "rediss://cache:6380/0"),
        ("REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
        ("DATABASE_URL", "postgres://u@h/d", "database_url", "postgres://u@h/d"),
        ("STATS_BIND", "[::1]:8000", "bind", "[::1]:8000"),
        ("STATS_BIND", "localhost:65535", "bind", "localhost:65535"),
        ("STATS_BIND", "host:1", "bind", "host:1"),
        ("STATS_LOG_LEVEL", "Warning", "log_level", "WARNING"),
        ("STATS_FAILPOINT", "after_freeze", "failpoint", "after_freeze"),
        ("STATS_FAILPOINT", "after_commit", "failpoint", "after_commit"),
        ("STATS_REDIS_CLUSTER", "true", "redis_cluster", True),
        ("STATS_REDIS_CLUSTER", "0", "redis_cluster", False),
    ],
)
def test_edge_values_are_accepted(name: str, raw: str, attr: str, expected: object) -> None:
    value = getattr(Config.from_env({name: raw}), attr)

    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        # not an integer
        ("STATS_WINDOW_SECONDS", "abc"),
        ("STATS_WINDOW_SECONDS", "1.5"),
        ("STATS_WINDOW_SECONDS", "1e3"),
        ("STATS_SHARDS", "four"),
        ("STATS_FLUSH_BATCH_SIZE", "10.0"),
        ("STATS_WEB_WORKERS", "2 4"),
        ("STATS_SHARDS", "1\n2"),
        # integer out of range
        ("STATS_WINDOW_SECONDS", "0"),
        ("STATS_WINDOW_SECONDS", "-300"),
        ("STATS_WINDOW_SECONDS", "86401"),
        ("STATS_SHARDS", "0"),
        ("STATS_SHARDS", "16385"),
        ("STATS_MAX_BODY_BYTES", "1023"),
        ("STATS_FLUSH_BATCH_SIZE", "0"),
        ("STATS_FLUSH_BATCH_SIZE", "100001"),
        ("STATS_WEB_WORKERS", "-1"),
        ("STATS_WEB_WORKERS", "1025"),
        ("STATS_WEB_THREADS", "0"),
        ("STATS_WEB_THREADS", "257"),
        ("STATS_DEDUP_SECONDS", "-1"),
        ("STATS_DEDUP_SECONDS", "601"),  # more than 2 x the default window
        ("STATS_DEDUP_SECONDS", "1.5"),
        # not a number, or out of range
        ("STATS_FLUSH_GRACE_SECONDS", "soon"),
        ("STATS_FLUSH_GRACE_SECONDS", "-1"),
        ("STATS_FLUSH_GRACE_SECONDS", "nan"),
        ("STATS_FLUSH_GRACE_SECONDS", "inf"),
        ("STATS_FLUSH_INTERVAL_SECONDS", "0"),
        ("STATS_FLUSH_INTERVAL_SECONDS", "-inf"),
        ("STATS_REDIS_TIMEOUT_SECONDS", "0"),
        ("STATS_REDIS_MEMORY_READY_RATIO", "1.5"),
        ("STATS_FLUSH_LOCK_SECONDS", "0.5"),
        # URL scheme
        ("REDIS_URL", "http://localhost:6379"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_URL", "redis:/localhost"),
        ("DATABASE_URL", "mysql://localhost/stats"),
        ("DATABASE_URL", "postgresql+psycopg2://localhost/stats"),
        ("DATABASE_URL", "dbname=stats"),
        # key prefix: the hash tag {shard} must stay the first braces
        ("STATS_KEY_PREFIX", "{ps}"),
        ("STATS_KEY_PREFIX", "a{b"),
        ("STATS_KEY_PREFIX", "a}b"),
        ("STATS_KEY_PREFIX", "p s"),
        # bind
        ("STATS_BIND", "localhost"),
        ("STATS_BIND", "8000"),
        ("STATS_BIND", ":8000"),
        ("STATS_BIND", "localhost:"),
        ("STATS_BIND", "localhost:http"),
        ("STATS_BIND", "localhost:0"),
        ("STATS_BIND", "localhost:65536"),
        ("STATS_BIND", "localhost:-1"),
        # enumerations
        ("STATS_RETENTION_DAYS", "-1"),
        ("STATS_RETENTION_DAYS", "a year"),
        ("STATS_PARTITION_AHEAD_DAYS", "0"),
        ("STATS_PARTITION_AHEAD_DAYS", "367"),
        ("STATS_LOG_LEVEL", "verbose"),
        ("STATS_LOG_FORMAT", "xml"),
        ("STATS_FAILPOINT", "before_freeze"),
        ("STATS_FAILPOINT", "after_freeze,mid_batch"),
        ("STATS_REDIS_CLUSTER", "cluster"),
        ("STATS_REDIS_WAIT_REPLICAS", "-1"),
        ("STATS_REDIS_WAIT_REPLICAS", "17"),
    ],
)
def test_invalid_value_raises_a_one_line_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({name: raw})

    message = str(excinfo.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert isinstance(excinfo.value, ValueError)


def test_an_invalid_value_fails_even_when_the_others_are_valid() -> None:
    env = dict(ALL_SET, STATS_SHARDS="many")

    with pytest.raises(ConfigError, match=r"^STATS_SHARDS: "):
        Config.from_env(env)


@pytest.mark.parametrize(
    ("window", "dedup", "windows"),
    [
        ("300", "", 2),
        ("300", "0", 0),
        ("300", "1", 1),
        ("300", "300", 1),
        ("300", "301", 2),
        ("60", "120", 2),
    ],
)
def test_dedup_windows(window: str, dedup: str, windows: int) -> None:
    env = {"STATS_WINDOW_SECONDS": window, "STATS_DEDUP_SECONDS": dedup}

    assert Config.from_env(env).dedup_windows == windows


def test_dedup_may_not_outlast_token_memory() -> None:
    env = {"STATS_WINDOW_SECONDS": "60", "STATS_DEDUP_SECONDS": "121"}

    with pytest.raises(ConfigError) as excinfo:
        Config.from_env(env)

    message = str(excinfo.value)
    assert message.startswith("STATS_DEDUP_SECONDS: ")
    assert "\n" not in message


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Config.from_env(ALL_SET))

    assert "api-secret" not in text
    assert "ingest-secret" not in text


def test_replace_returns_a_changed_copy() -> None:
    config = Config()

    changed = replace(config, shards=2, key_prefix="x")

    assert (changed.shards, changed.key_prefix) == (2, "x")
    assert (config.shards, config.key_prefix) == (8, "ps")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://stats:hunter2@db/stats"),
        ("REDIS_URL", "http://:hunter2@cache:6379/0"),
    ],
)
def test_errors_never_echo_a_url_that_may_hold_a_password(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({name: value})
    assert str(caught.value).startswith(f"{name}:")
    assert "hunter2" not in str(caught.value)


CLUSTER = {"STATS_REDIS_CLUSTER": "1", "REDIS_URL": "redis://10.0.0.7:7000"}


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        # A batch resent after a partial failure relies on retry recognition.
        ({"STATS_DEDUP_SECONDS": "0"}, "STATS_DEDUP_SECONDS"),
        ({"REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://10.0.0.7:7000/3"}, "REDIS_URL"),
    ],
)
def test_cluster_mode_refuses_what_a_cluster_cannot_do(changes, variable) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({**CLUSTER, **changes})
    assert str(excinfo.value).startswith(f"{variable}: ")
    assert "\n" not in str(excinfo.value)


def test_waiting_for_replicas_needs_cluster_mode() -> None:
    with pytest.raises(ConfigError, match=r"^STATS_REDIS_WAIT_REPLICAS: "):
        Config.from_env({"STATS_REDIS_WAIT_REPLICAS": "1"})
    assert Config.from_env({**CLUSTER, "STATS_REDIS_WAIT_REPLICAS": "1"}).redis_wait_replicas == 1


@pytest.mark.parametrize(
    "url", ["redis://10.0.0.7:7000", "redis://10.0.0.7:7000/0", "rediss://h:1/0"]
)
def test_cluster_urls_of_database_0(url: str) -> None:
    assert Config.from_env({**CLUSTER, "REDIS_URL": url}).redis_cluster

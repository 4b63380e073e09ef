"""Settings of the availability work: blank tokens refused, timeouts and read slots."""

from __future__ import annotations

from dataclasses import replace

import pytest

from payload_stats.config import Config, ConfigError


@pytest.mark.parametrize("name", ["STATS_API_TOKEN", "STATS_INGEST_TOKEN"])
@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_a_blank_token_is_a_configuration_error(name: str, blank: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({name: blank})
    message = str(raised.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


@pytest.mark.parametrize("attr", ["api_token", "ingest_token"])
def test_a_blank_token_is_refused_when_built_in_code_too(attr: str) -> None:
    with pytest.raises(ConfigError):
        Config(**{attr: " "})


def test_unset_tokens_leave_the_endpoints_open() -> None:
    config = Config.from_env({})
    assert config.api_token is None and config.ingest_token is None
    config = Config.from_env({"STATS_API_TOKEN": " s3cret ", "STATS_INGEST_TOKEN": "dev"})
    assert (config.api_token, config.ingest_token) == ("s3cret", "dev")


def test_timeout_defaults() -> None:
    config = Config.from_env({})
    assert config.pg_statement_timeout_ms == 5000
    assert config.pg_lock_timeout_ms == 1000
    assert config.flush_statement_timeout_ms == 12000
    assert config.flush_pg_timeouts_ms == (12000, 1000)
    assert config.live_max_keys == 20000


def test_flush_timeouts_are_capped_at_a_fifth_of_the_lock_ttl() -> None:
    config = replace(Config(), flush_lock_seconds=1.5)
    assert config.flush_pg_timeouts_ms == (300, 300)
    config = replace(Config(), flush_lock_seconds=30, flush_statement_timeout_ms=60000)
    assert config.flush_pg_timeouts_ms == (6000, 1000)


@pytest.mark.parametrize(
    ("threads", "concurrency", "slots"),
    [(8, 0, 4), (1, 0, 1), (3, 0, 1), (16, 0, 4), (64, 0, 4), (16, 12, 12)],
)
def test_read_slots(threads: int, concurrency: int, slots: int) -> None:
    config = Config(web_threads=threads, read_concurrency=concurrency)
    assert config.read_slots == slots


def test_reads_may_not_take_every_thread() -> None:
    with pytest.raises(ConfigError, match="^STATS_READ_CONCURRENCY: "):
        Config.from_env({"STATS_WEB_THREADS": "8", "STATS_READ_CONCURRENCY": "8"})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("STATS_PG_STATEMENT_TIMEOUT_MS", "0"),
        ("STATS_PG_LOCK_TIMEOUT_MS", "-1"),
        ("STATS_FLUSH_STATEMENT_TIMEOUT_MS", "abc"),
        ("STATS_LIVE_MAX_KEYS", "10"),
        ("STATS_READ_CONCURRENCY", "1.5"),
    ],
)
def test_invalid_values_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        Config.from_env({name: raw})

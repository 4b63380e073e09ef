"""Recorded settings: window length, shard count and key prefix are recorded by the
first process (PostgreSQL table ``deployment``, Redis key ``<prefix>:deployment``);
a process configured otherwise refuses to run and writes nothing, until the
settings are deliberately re-recorded after a drain. A database migrated by a
newer release is refused too. Subprocesses on the real servers; payloads are
written in process at past instants, so their windows are closed.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest

from payload_stats.buffer.ingest import record
from payload_stats.buffer.scripts import Scripts
from payload_stats.postgres.migrations import migrations
from payload_stats.postgres.pool import connection
from tests.conftest import payload
from tests.integration.test_exactness_support import (
    environment,
    execute,
    keyspace,
    only_line,
    stats_table,
)
from tests.support.servers import free_port, run_cli

pytestmark = pytest.mark.parametrize("shards", [4], ids=["4shards"])


def recorded_in_postgres(pool) -> tuple | None:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT window_seconds, shards, key_prefix FROM deployment")
        rows = cur.fetchall()
        conn.rollback()
    assert len(rows) <= 1
    return rows[0] if rows else None


def mismatch(variable: str, mine: object, recorded: object) -> str:
    return (
        f"payload-stats: error: {variable} is {mine} here but this deployment recorded "
        f"{recorded}; set {variable}={recorded}, or drain and re-record (docs/deployment.md)"
    )


def buffer_some(redis, config, at: float) -> dict:
    """Four payloads at ``at``; returns the rows they make."""
    short = config.window_seconds * 1000 - 1
    sent = [
        payload(token=f"s-{i}", content=f"m-{i % 2}", cdn=10 + i, p2p=i, timespan=100 * i,
                sessionDuration=short)
        for i in range(4)
    ]  # fmt: skip
    record(redis, Scripts(redis), config, sent, at)
    end = (math.floor(at / config.window_seconds) + 1) * config.window_seconds
    return {
        (end, "acme", "m-0"): (22, 2, 2, 2, 200),
        (end, "acme", "m-1"): (24, 4, 2, 2, 400),
    }


def test_settings_are_recorded_once_and_enforced_until_rerecorded(config, redis, pool, tmp_path):
    config = replace(config, window_seconds=2, flush_grace_seconds=0, data_dir=str(tmp_path))
    env = environment(config, STATS_LOG_LEVEL="WARNING")
    prefix = config.key_prefix
    assert recorded_in_postgres(pool) is None
    assert redis.exists(f"{prefix}:deployment") == 0

    first = run_cli(env, "init-db")
    assert first.returncode == 0, first.stderr
    assert recorded_in_postgres(pool) == (2, 4, prefix)
    assert redis.hgetall(f"{prefix}:deployment") == {b"window_seconds": b"2", b"shards": b"4"}

    expected = buffer_some(redis, config, math.floor(time.time()) - 600 + 0.5)
    buffered = keyspace(redis, prefix, sessions=False)
    for variable, value, recorded in (
        ("STATS_WINDOW_SECONDS", "3", 2),
        ("STATS_SHARDS", "2", 4),
        ("STATS_KEY_PREFIX", f"{prefix}:other", prefix),
    ):
        refused = run_cli({**env, variable: value}, "flush")
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert only_line(refused.stderr) == mismatch(variable, value, recorded)
        # Nothing written: no row, no key moved or added (under either prefix).
        assert stats_table(pool) == {}
        assert keyspace(redis, prefix, sessions=False) == buffered
    assert recorded_in_postgres(pool) == (2, 4, prefix)

    # live has no database: it compares with the record in Redis.
    no_database = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    for variable, value, recorded in (("STATS_SHARDS", "2", 4), ("STATS_WINDOW_SECONDS", "3", 2)):
        refused = run_cli({**no_database, variable: value}, "live", "--once")
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert only_line(refused.stderr) == mismatch(variable, value, recorded)
    assert redis.hgetall(f"{prefix}:deployment") == {b"window_seconds": b"2", b"shards": b"4"}
    assert run_cli(no_database, "live", "--once").returncode == 0

    shown = run_cli(env, "settings")
    assert (shown.returncode, shown.stdout) == (
        0,
        f"STATS_WINDOW_SECONDS: here 2, recorded 2\nSTATS_SHARDS: here 4, recorded 4\n"
        f"STATS_KEY_PREFIX: here {prefix}, recorded {prefix}\n",
    ), shown.stderr
    shown = run_cli({**env, "STATS_WINDOW_SECONDS": "3"}, "settings")
    assert (shown.returncode, shown.stdout.splitlines()[0]) == (
        0,
        "STATS_WINDOW_SECONDS: here 3, recorded 2   <- differs",
    )

    # Re-recording is refused while Redis holds windows buffered under the record.
    new = {**env, "STATS_WINDOW_SECONDS": "3"}
    early = run_cli(new, "settings", "--rerecord")
    assert (early.returncode, early.stdout) == (2, "")
    assert only_line(early.stderr) == (
        "payload-stats: error: Redis still holds 1 window(s) buffered under the recorded "
        "settings: stop the web processes, wait for the last window to close, run "
        "payload-stats flush with the recorded settings, then re-record"
    )
    assert recorded_in_postgres(pool) == (2, 4, prefix)
    assert keyspace(redis, prefix, sessions=False) == buffered

    drained = run_cli(env, "flush")
    assert drained.returncode == 0, drained.stderr
    assert stats_table(pool) == expected

    done = run_cli(new, "settings", "--rerecord")
    assert (done.returncode, done.stdout) == (
        0,
        f"recorded (was Settings(window_seconds=2, shards=4, key_prefix='{prefix}'))\n",
    ), done.stderr
    assert recorded_in_postgres(pool) == (3, 4, prefix)
    assert redis.hgetall(f"{prefix}:deployment") == {b"window_seconds": b"3", b"shards": b"4"}

    # The new settings run; the old ones are refused now.
    config3 = replace(config, window_seconds=3)
    expected |= buffer_some(redis, config3, math.floor(time.time()) - 300 + 0.5)
    old = run_cli(env, "flush")
    assert old.returncode == 2
    assert only_line(old.stderr) == mismatch("STATS_WINDOW_SECONDS", 2, 3)
    flushed = run_cli(new, "flush")
    assert flushed.returncode == 0, flushed.stderr
    assert stats_table(pool) == expected


@pytest.mark.parametrize(
    "command", [("flush",), ("init-db",), ("scheduler",), ("web", "--bind")],
    ids=["flush", "init-db", "scheduler", "web"],
)  # fmt: skip
def test_a_schema_newer_than_the_code_is_refused(config, redis, pool, tmp_path, command):
    config = replace(config, window_seconds=1, flush_grace_seconds=0, data_dir=str(tmp_path))
    execute(pool, "INSERT INTO schema_migrations (version, name) VALUES (99, 'from_the_future')")
    expected = buffer_some(redis, config, math.floor(time.time()) - 600 + 0.5)
    assert expected
    buffered = keyspace(redis, config.key_prefix, sessions=False)
    if command[0] == "web":
        command = (*command, f"127.0.0.1:{free_port()}")
    shipped = max(version for version, _, _ in migrations())

    refused = run_cli(environment(config, STATS_LOG_LEVEL="WARNING"), *command, timeout=15)
    assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
    assert only_line(refused.stderr) == (
        f"payload-stats: error: the database schema is version 99, newer than this "
        f"release's {shipped}: upgrade payload-stats"
    )
    assert stats_table(pool) == {}
    assert keyspace(redis, config.key_prefix, sessions=False) == buffered


def test_a_refused_flush_leaves_the_open_window_buffered(config, redis, pool, tmp_path):
    # Under 1 s windows, the open window of a 300 s deployment would look closed.
    config = replace(config, window_seconds=300, data_dir=str(tmp_path))
    env = environment(config, STATS_LOG_LEVEL="WARNING")
    assert run_cli(env, "init-db").returncode == 0
    buffer_some(redis, config, time.time())
    buffered = keyspace(redis, config.key_prefix)

    refused = run_cli({**env, "STATS_WINDOW_SECONDS": "1"}, "flush")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert only_line(refused.stderr) == mismatch("STATS_WINDOW_SECONDS", 1, 300)
    assert stats_table(pool) == {}
    assert keyspace(redis, config.key_prefix) == buffered

    allowed = run_cli(env, "flush")
    assert (allowed.returncode, allowed.stdout) == (0, "nothing to flush\n"), allowed.stderr
    assert stats_table(pool) == {}
    assert keyspace(redis, config.key_prefix) == buffered

"""The ``payload-stats`` command end to end: subprocesses against real Redis and PostgreSQL.

Payloads are written in process with ``payload_stats.buffer.ingest.record`` at past instants
(windows of 1 s, grace 0: they are closed at once), so the ``flush``
subprocess, on the real clock, has work without the test sleeping. The
expected rows come from the reference model (``tests/support/model.py``),
fed by the same ``Feeder`` as the in-process flush tests. Every subprocess
is waited for, or killed, before the test ends.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest

from payload_stats.buffer import snapshots
from payload_stats.config import Config
from payload_stats.postgres.migrations import migrations
from tests.conftest import payload
from tests.support.drive import Feeder
from tests.support.model import Model, Row
from tests.support.servers import (
    UNREACHABLE_DATABASE_URL,
    UNREACHABLE_REDIS_URL,
    cli_environment,
    descendants,
    free_port,
    http,
    kill_group,
    run_cli,
    running,
    start_cli,
    wait_for_port,
)
from tests.support.store import assert_drained, stats_table

FAILPOINT_EXIT_CODE = 17

SUMMARY = re.compile(r"flushed (\d+) window\(s\), (\d+) row\(s\) in \d+\.\d{3}s \(flush \S+\)")
WINDOW_LINE = re.compile(
    r"  (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)  rows=(\d+) cdn=(\d+) p2p=(\d+) "
    r"sessions=(\d+) payloads=(\d+) watch_ms=(\d+) lag=-?\d+\.\ds"
)


@pytest.fixture
def cli_config(config: Config) -> Config:
    """Short windows, no grace, and a lock a killed flusher holds for 1 s only."""
    return replace(config, window_seconds=1, flush_grace_seconds=0, flush_lock_seconds=1)


def parse_summary(stdout: str) -> dict[int, dict[str, int]]:
    """{window end: rows and sums} from the output of ``flush``."""
    lines = stdout.splitlines()
    head = SUMMARY.fullmatch(lines[0])
    assert head, f"unexpected flush output: {stdout!r}"
    windows = {}
    for line in lines[1:]:
        m = WINDOW_LINE.fullmatch(line)
        assert m, f"unexpected flush output line: {line!r}"
        end = datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        windows[int(end.timestamp())] = dict(
            zip(
                ("rows", "cdn", "p2p", "sessions", "payloads", "watch_ms"),
                map(int, m.groups()[1:]),
                strict=True,
            )
        )
    assert len(windows) == int(head[1])
    assert sum(w["rows"] for w in windows.values()) == int(head[2])
    return windows


def populate(feeder: Feeder, base: int, windows: int, pairs: int, seed: int = 0) -> None:
    """``pairs`` (customer, content) pairs in each of ``windows`` closed 1 s windows."""
    rng = random.Random(seed)
    for w in range(windows):
        feeder.send(
            [
                feeder.make(
                    f"customer-{i % 3}",
                    f"live/{i}",
                    cdn=rng.randrange(10**9),
                    p2p=rng.choice([0, rng.randrange(10**9)]),
                    sessionDuration=rng.choice([0, 500, 999, 1000, 30_000]),
                )
                for i in range(pairs)
            ],
            base + w + 0.5,
        )


def past_base(seconds_ago: int = 600) -> int:
    return math.floor(time.time()) - seconds_ago


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert lines[0].startswith("payload-stats: error: "), lines[0]
    return lines[0]


# --- init-db and flush --------------------------------------------------------------------------


def test_init_db_twice(cli_config, pg_schema):
    env = cli_environment(cli_config)
    first = run_cli(env, "init-db")
    assert first.returncode == 0, first.stderr
    shipped = ", ".join(f"{v:04d}_{n}" for v, n, _ in migrations())
    assert first.stdout == f"applied {shipped}\n"
    second = run_cli(env, "init-db")
    assert (second.returncode, second.stdout) == (0, "schema is up to date\n"), second.stderr


def test_flush_prints_what_it_wrote(redis, pool, cli_config):
    env = cli_environment(cli_config)
    empty = run_cli(env, "flush")
    assert (empty.returncode, empty.stdout) == (0, "nothing to flush\n"), empty.stderr

    feeder = Feeder(redis, cli_config)
    populate(feeder, past_base(), windows=3, pairs=2 * cli_config.flush_batch_size + 3)
    done = run_cli(env, "flush")
    assert done.returncode == 0, done.stderr
    assert parse_summary(done.stdout) == {
        end: feeder.model.window_totals(end) for end in feeder.model.ends()
    }
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, cli_config)

    again = run_cli(env, "flush")
    assert (again.returncode, again.stdout) == (0, "nothing to flush\n"), again.stderr
    assert stats_table(pool) == feeder.model.rows()


def test_flush_waits_for_end_plus_grace_on_the_real_clock(redis, pool, cli_config):
    config = replace(cli_config, window_seconds=2, flush_grace_seconds=2)
    env = cli_environment(config)
    feeder = Feeder(redis, config)
    now = time.time()
    if now % 2 > 0.2:  # start right after a window opens: the margins below are wide
        time.sleep(2 - now % 2 + 0.02)
    now = time.time()
    end = (math.floor(now / 2) + 1) * 2
    feeder.send([feeder.make(cdn=i, p2p=1) for i in range(10)], now)

    open_window = run_cli(env, "flush")
    assert (open_window.returncode, open_window.stdout) == (0, "nothing to flush\n")
    time.sleep(max(0.0, end + 0.1 - time.time()))
    in_grace = run_cli(env, "flush")
    assert time.time() < end + config.flush_grace_seconds, "too slow to test the grace"
    assert (in_grace.returncode, in_grace.stdout) == (0, "nothing to flush\n")
    assert stats_table(pool) == {}

    time.sleep(max(0.0, end + config.flush_grace_seconds + 0.05 - time.time()))
    closed = run_cli(env, "flush")
    assert closed.returncode == 0, closed.stderr
    assert parse_summary(closed.stdout) == {end: feeder.model.window_totals(end)}
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


@pytest.mark.parametrize(
    ("variable", "url", "server"),
    [
        ("DATABASE_URL", UNREACHABLE_DATABASE_URL, "PostgreSQL"),
        ("REDIS_URL", UNREACHABLE_REDIS_URL, "Redis"),
    ],
)
def test_flush_fails_in_one_line_when_a_server_is_down(
    redis, pool, cli_config, variable, url, server
):
    feeder = Feeder(redis, cli_config)
    populate(feeder, past_base(), windows=2, pairs=10)
    before = sorted(set(redis.scan_iter(match=f"{cli_config.key_prefix}:*")))

    failed = run_cli(cli_environment(cli_config, **{variable: url}), "flush", timeout=30)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert one_error_line(failed.stderr).startswith(f"payload-stats: error: {server}: ")
    assert sorted(set(redis.scan_iter(match=f"{cli_config.key_prefix}:*"))) == before
    assert stats_table(pool) == {}

    done = run_cli(cli_environment(cli_config), "flush")
    assert done.returncode == 0, done.stderr
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, cli_config)


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("flush", "STATS_WINDOW_SECONDS", "abc"),
        ("init-db", "STATS_WINDOW_SECONDS", "abc"),
        ("serve", "STATS_WINDOW_SECONDS", "abc"),
        ("scheduler", "STATS_WINDOW_SECONDS", "abc"),
        ("flush", "STATS_SHARDS", "0"),
        ("flush", "STATS_FLUSH_GRACE_SECONDS", "-1"),
        ("flush", "STATS_FAILPOINT", "everywhere"),
        ("flush", "REDIS_URL", "localhost:6379"),
    ],
)
def test_invalid_configuration_exits_2_naming_the_variable(
    redis, pool, cli_config, command, variable, value
):
    feeder = Feeder(redis, cli_config)
    populate(feeder, past_base(), windows=1, pairs=3)
    failed = run_cli(cli_environment(cli_config, **{variable: value}), command, timeout=30)
    assert failed.returncode == 2, (failed.stdout, failed.stderr)
    assert variable in one_error_line(failed.stderr)
    assert stats_table(pool) == {}
    assert snapshots.pending_snapshots(redis, cli_config) == []


# --- crashes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["after_freeze", "mid_batch", "after_commit"])
def test_flush_killed_at_a_failpoint_then_flush(redis, pool, cli_config, point):
    feeder = Feeder(redis, cli_config)
    base = past_base()
    populate(feeder, base, windows=3, pairs=2 * cli_config.flush_batch_size + 1)
    env = cli_environment(cli_config)

    crashed = run_cli({**env, "STATS_FAILPOINT": point}, "flush")
    assert crashed.returncode == FAILPOINT_EXIT_CODE, (crashed.stdout, crashed.stderr)
    assert crashed.stdout == ""
    ends = feeder.model.ends()
    committed = stats_table(pool)
    if point == "after_commit":  # the first window is in PostgreSQL, still in Redis too
        assert committed == feeder.model.rows(until_end=ends[0])
    else:
        assert committed == {}
    assert snapshots.pending_snapshots(redis, cli_config)

    done = run_cli(env, "flush")
    assert done.returncode == 0, done.stderr
    written = parse_summary(done.stdout)
    assert sorted(written) == ends
    for end in ends:
        expected = feeder.model.window_totals(end)
        if point == "after_commit" and end == ends[0]:
            expected = dict.fromkeys(expected, 0)  # replayed: nothing written twice
        assert written[end] == expected
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, cli_config)


def test_flush_killed_at_random_instants(redis, pool, cli_config):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    feeder = Feeder(redis, cli_config)
    base = past_base()
    populate(feeder, base, windows=8, pairs=250, seed=seed)
    # One counter hash per round trip: a flush lasts long enough to be hit.
    env = cli_environment(cli_config, STATS_LOG_LEVEL="WARNING", STATS_FLUSH_BATCH_SIZE="1")
    codes, interrupted = [], 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc = start_cli(env, "flush")
        try:
            time.sleep(rng.uniform(0.2, 1.2))
        finally:
            proc.kill()
            codes.append(proc.wait(10))
        interrupted += bool(snapshots.pending_snapshots(redis, cli_config))
        # Meanwhile payloads keep arriving, for flushed windows too.
        straggle = base + rng.randrange(10)
        feeder.send(
            [
                feeder.make("late", f"w{straggle}", cdn=rng.randrange(10**6), p2p=1)
                for _ in range(rng.randrange(1, 20))
            ],
            straggle + 0.5,
        )

    done = run_cli(env, "flush")
    assert done.returncode == 0, done.stderr
    assert stats_table(pool) == feeder.model.rows(), f"seed {seed}, exit codes {codes}"
    assert_drained(redis, cli_config)
    assert interrupted, f"no kill landed inside a flush (seed {seed}, exit codes {codes})"


# --- serve --------------------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, answer = http("POST", url, json.dumps(body).encode(), timeout=5)
    return status, json.loads(answer)


README_PAYLOAD = {
    "token": "8c7e4d7a-4b0e-4f5e-9d55-0b8f1c1f2a10",
    "customer": "acme-tv",
    "content": "live/channel-1",
    "timespan": 30000,
    "p2p": 5242880,
    "cdn": 1048576,
    "sessionDuration": 30000,
}


@pytest.mark.slow
def test_serve_end_to_end(pool, cli_config, tmp_path):
    config = replace(cli_config, window_seconds=2, flush_grace_seconds=0.5)
    env = cli_environment(config, STATS_FLUSH_INTERVAL_SECONDS="0.5", STATS_DATA_DIR=str(tmp_path))
    port = free_port()
    url = f"http://127.0.0.1:{port}/stats"
    log = (tmp_path / "serve.log").open("w+b")
    proc = start_cli(
        env, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", log=log, new_session=True
    )
    children: dict[int, str] = {}
    try:
        wait_for_port(port, proc)
        time.sleep(0.5)  # let gunicorn fork its workers
        children = descendants(proc.pid)
        assert len(children) >= 4, f"expected web, 2 workers and scheduler: {children}"

        model = Model.of(config)
        sent = [
            README_PAYLOAD,  # sessionDuration 30 s >= the 2 s window: starts no session
            {**README_PAYLOAD, "cdn": 1, "p2p": 2, "sessionDuration": 60000},
            payload(
                token="viewer-1",
                customer="acme-tv",
                content="live/channel-1",
                cdn=10,
                p2p=20,
                sessionDuration=500,
            ),
            payload(
                token="viewer-2",
                customer="acme-tv",
                content="vod/a:b",
                cdn=0,
                p2p=0,
                sessionDuration=0,
                extra="ignored",
            ),
            payload(
                token="viewer-3", customer="other", content="live/channel-1", cdn=10**12, p2p=10**12
            ),
        ]
        now = time.time()
        if now % 2 > 1.0:  # all payloads in one window, far from its end
            time.sleep(2 - now % 2 + 0.02)
        # Then a device retrying the README payload: answered, counted once.
        for body in [*sent, README_PAYLOAD]:
            before = time.time()
            status, answer = _post(url, body)
            expected = model.receive(before, body, until=time.time())
            assert status == 200
            assert answer == {
                "accepted": int(expected.counted),
                "duplicates": int(expected.duplicate),
            }
        assert answer == {"accepted": 0, "duplicates": 1}
        end = model.ends()[0]
        assert model.rows() == {
            (end, "acme-tv", "live/channel-1"): Row(1048577 + 10, 5242882 + 20, 1, 3, 90_000),
            (end, "acme-tv", "vod/a:b"): Row(0, 0, 1, 1, 30_000),
            (end, "other", "live/channel-1"): Row(10**12, 10**12, 1, 1, 30_000),
        }

        deadline = time.monotonic() + (end + 10 - time.time())
        while stats_table(pool) != model.rows() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stats_table(pool) == model.rows()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert {pid for pid, started in children.items() if running(pid, started)} == set()
    finally:
        kill_group(proc)
        for pid, started in children.items():
            if running(pid, started):
                os.kill(pid, signal.SIGKILL)
        log.seek(0)
        print(log.read().decode(errors="replace"))  # shown by pytest when the test fails
        log.close()

"""``payload-stats demo`` and ``serve --demo``: the simulated devices are counted
exactly as they say, and with the demo window the first row is in PostgreSQL
within a minute of the start.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psycopg2
import pytest

from payload_stats.buffer.live import top_rows
from payload_stats.config import Config
from payload_stats.ops import demo, embedded
from payload_stats.ops.serve import window_settings
from tests.support.servers import (
    cli_environment,
    free_port,
    http,
    kill_group,
    run_cli,
    start_cli,
    wait_for,
)
from tests.support.web import ServedApp


def test_window_settings_suit_the_window():
    assert window_settings(10) == {
        "STATS_WINDOW_SECONDS": "10",
        "STATS_FLUSH_GRACE_SECONDS": "1",
        "STATS_FLUSH_INTERVAL_SECONDS": "2",
    }
    assert window_settings(300) == {
        "STATS_WINDOW_SECONDS": "300",
        "STATS_FLUSH_GRACE_SECONDS": "5",
        "STATS_FLUSH_INTERVAL_SECONDS": "10",
    }
    assert window_settings(1)["STATS_FLUSH_INTERVAL_SECONDS"] == "1"


def test_devices_play_sessions_like_players():
    import random

    wall = [1_795_687_201.0]
    sim = demo.Devices(50, 2.0, random.Random(7), lambda: wall[0], now=0.0)
    sent: list[tuple[dict, str]] = []
    for step in range(1, 2000):
        wall[0] += 0.1
        sent += [(body, kind) for _, body, kind in sim.due(step * 0.1)]
    kinds = {kind for _, kind in sent}
    assert kinds == {"first", "regular", "keepalive"}
    tokens = {body["token"] for body, _ in sent}
    assert len(tokens) > 50  # sessions ended and new ones started
    for body, kind in sent:
        assert set(body) == {
            "token", "customer", "content", "timespan", "p2p", "cdn", "sessionDuration"
        }  # fmt: skip
        assert body["cdn"] >= 0 and body["p2p"] >= 0
        if kind == "first":
            assert body["p2p"] == 0 and body["cdn"] > 0 and body["sessionDuration"] < 5000
        if kind == "keepalive":
            assert body["cdn"] == body["p2p"] == 0
    assert any(body["p2p"] > body["cdn"] for body, _ in sent)  # large live audiences
    customers = {body["customer"] for body, _ in sent}
    assert {"acme-tv", "nordic-stream"} <= customers


def test_what_the_demo_counted_is_what_the_service_holds(config: Config, app, redis):
    """Single payloads, batches (many due at once), retries answered as duplicates."""
    lines: list[str] = []
    with ServedApp(app) as served:
        tally = demo.run(
            served.url, devices=60, duration=3, interval=0.3, token=None, seed=3,
            echo=lines.append,
        )  # fmt: skip
    assert tally.errors == {}, lines
    assert tally.retries > 0 and tally.duplicates == tally.retries
    assert tally.keepalives > 0
    rows = top_rows(redis, config, limit=None).rows
    assert sum(r.cdn for r in rows) == tally.cdn
    assert sum(r.p2p for r in rows) == tally.p2p
    assert sum(r.payloads for r in rows) == tally.counted
    assert sum(r.watch_ms for r in rows) == tally.watch_ms
    assert sum(r.sessions for r in rows) == tally.sessions >= 60
    assert lines[-1] == (
        f"demo: counted payloads={tally.counted} cdn={tally.cdn} p2p={tally.p2p} "
        f"sessions={tally.sessions} watch_ms={tally.watch_ms}"
    )


def test_the_demo_sends_the_ingest_token(config: Config, clock, redis):
    from dataclasses import replace

    from payload_stats.web.app import create_app

    app = create_app(replace(config, ingest_token="s3cret"), clock=clock)
    with ServedApp(app) as served:
        refused = demo.run(served.url, 5, 1, 0.5, None, 1, echo=lambda line: None)
        accepted = demo.run(served.url, 5, 1, 0.5, "s3cret", 1, echo=lambda line: None)
    assert refused.counted == 0 and refused.errors["401"] > 0
    assert accepted.counted > 0 and not accepted.errors


def _rows(database_url: str) -> list[tuple]:
    try:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM time)::bigint, customer, cdn, p2p FROM stats")
            return cur.fetchall()
    except psycopg2.Error:
        return []


@pytest.mark.slow
def test_serve_demo_shows_a_first_row_within_a_minute(tmp_path: Path):
    port = free_port()
    log = tmp_path / "serve.log"
    started = time.monotonic()
    proc = start_cli(
        cli_environment(STATS_WEB_WORKERS="1"),
        "serve", "--demo", "--bind", f"127.0.0.1:{port}",
        cwd=tmp_path, log=log, new_session=True,
    )  # fmt: skip
    try:
        data = tmp_path / "var" / "demo"  # its own data directory
        state = data / embedded.STATE_FILE
        wait_for(state.exists, 60, "the embedded servers")
        urls = embedded.running_urls(Config(data_dir=str(data)))
        rows = wait_for(lambda: _rows(urls["database_url"]), 60, "a first row in PostgreSQL")
        assert time.monotonic() - started < 60
        assert all(t % 10 == 0 for t, *_ in rows)  # 10-second windows
        assert {customer for _, customer, *_ in rows} <= {c.name for c in demo.CUSTOMERS}
        assert http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200

        # The other commands find the demo's servers and settings by themselves.
        done = run_cli(cli_environment(), "live", "--once", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "window ending" in done.stdout and "of 10s" in done.stdout
        assert done.stderr == ""
        text = log.read_text()
        assert "10-second windows: each one is in PostgreSQL within 3 s of its end" in text
        assert re.search(r"demo: 300 devices posting to http://127\.0\.0\.1:\d+", text)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
        kill_group(proc)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert re.search(r"demo: counted payloads=[1-9]\d* ", text)
    assert not (tmp_path / "var" / embedded.STATE_FILE).exists()


def test_serve_demo_refuses_servers_of_your_own(tmp_path: Path):
    env = cli_environment(REDIS_URL="redis://127.0.0.1:1/0")
    done = run_cli(env, "serve", "--demo", "--bind", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(
        "payload-stats: error: serve --demo runs on embedded servers of its own under var/demo"
    )

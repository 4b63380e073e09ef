"""Helpers shared by the ``test_exactness_*`` modules (this module holds no tests).

- ``OwnRedis``: a redis-server of a test's own (maxmemory, eviction policy), on a
  free port, stopped when the test ends; the machine's server is never reconfigured.
- ``environment``: the environment of a ``payload-stats`` command run as a
  subprocess (``tests.support.servers.run_cli``).
- ``WebProcess``: ``payload-stats web`` (gunicorn) as a subprocess.
- Readers of the PostgreSQL tables with every column, and of a Redis keyspace.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from redis import Redis

from payload_stats.buffer import keys as k_
from payload_stats.config import Config
from payload_stats.postgres.pool import connection
from tests.support import servers

ROOT = Path(__file__).resolve().parents[2]
MAX_BIGINT = 2**63 - 1


class OwnRedis(servers.RedisServer):
    """A redis-server started for one test: no persistence, its own port and
    directory; ``args`` are more redis-server options (maxmemory, its policy)."""

    def __init__(self, *args: str) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="exactness-redis-")), appendonly=False)
        self.options += list(args)  # after the defaults: the later option wins

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            super().stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the command as a subprocess ----------------------------------------------------------------


def environment(config: Config, **extra: str) -> dict[str, str]:
    """The process environment of a command run with ``config`` (nothing inherited
    that could change its settings). ``config.data_dir`` must be the test's own."""
    assert config.data_dir != Config().data_dir, "give the command a data directory of its own"
    env = servers.cli_environment(
        config,
        STATS_MAX_BODY_BYTES=str(config.max_body_bytes),
        # Never the repository's var/: an embedded.env there would lend its URLs.
        STATS_DATA_DIR=config.data_dir,
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def error_line(stderr: str) -> str:
    """The one ``payload-stats: error:`` line of ``stderr`` (log lines aside)."""
    lines = [line for line in stderr.splitlines() if line.startswith("payload-stats: error: ")]
    assert len(lines) == 1, f"expected one error line on stderr, got {stderr!r}"
    return lines[0]


def only_line(stderr: str) -> str:
    """``stderr`` when it is exactly one ``payload-stats: error:`` line."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {stderr!r}"
    assert lines[0].startswith("payload-stats: error: "), lines[0]
    return lines[0]


class WebProcess:
    """``payload-stats web --bind 127.0.0.1:PORT --workers 1`` until ``stop``."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.port = servers.free_port()
        self.log_path = log
        self.log = log.open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "payload_stats", "web", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "1"],
            env=dict(env),
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 20) -> WebProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"web exited: {self.output()}"
            try:
                status, _, _ = self.request("GET", "/healthz")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"web did not answer /healthz in {timeout} s: {self.output()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body or text) over a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(
                method, path, body=body, headers=dict(headers or {}), encode_chunked=chunked
            )
            response = conn.getresponse()
            raw = response.read()
            found = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        try:
            return response.status, found, json.loads(raw)
        except ValueError:
            return response.status, found, raw.decode("utf-8", "replace")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()
        return self.process.returncode


# --- reading what was written -------------------------------------------------------------------


def stats_table(pool) -> dict[tuple[int, str, str], tuple[int, int, int, int, int]]:
    """{(window end, customer, content): (cdn, p2p, sessions, payloads, watch_ms)}."""
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM time)::bigint, customer, content, cdn, p2p, sessions, "
            "payloads, watch_ms FROM stats"
        )
        rows = cur.fetchall()
        conn.rollback()
    return {(t, cu, co): tuple(v) for t, cu, co, *v in rows}


def quarantine_table(pool) -> list[dict[str, Any]]:
    """Every row of stats_quarantine, by id, numeric columns as Python ints."""
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, extract(epoch FROM time)::bigint AS time, customer, content, cdn, p2p, "
            "sessions, payloads, watch_ms, raw_key, reason, snapshot_ids, resolved_at, resolution "
            "FROM stats_quarantine ORDER BY id"
        )
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        conn.rollback()
    found = []
    for row in rows:
        item = dict(zip(names, row, strict=True))
        for name in ("cdn", "p2p", "sessions", "payloads", "watch_ms"):
            assert item[name] == int(item[name])
            item[name] = int(item[name])
        if item["raw_key"] is not None:
            item["raw_key"] = bytes(item["raw_key"])
        found.append(item)
    return found


def ledger_ids(pool, window_end: int) -> list[str]:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT snapshot_id FROM flush_ledger WHERE window_end = to_timestamp(%s) "
            "ORDER BY snapshot_id",
            (window_end,),
        )
        ids = [r[0] for r in cur.fetchall()]
        conn.rollback()
    return ids


def execute(pool, statement: str, params: Any = None) -> None:
    with connection(pool) as conn, conn, conn.cursor() as cur:
        cur.execute(statement, params)


def keyspace(redis: Redis, prefix: str, *, sessions: bool = True) -> dict[bytes, bytes]:
    """{key: DUMP} of every key under ``prefix``: equal before and after means untouched.

    ``sessions=False`` leaves out session memory (``P:{s}:t:k``), which expires on
    its own a few seconds after payloads written at a past instant.
    """
    return {
        key: redis.dump(key)
        for key in redis.scan_iter(match=f"{prefix}:*", count=1000)
        if sessions or b":t:" not in key
    }


def tokens_in_shards(shards: int, per_shard: int = 1, stem: str = "tok") -> dict[int, list[str]]:
    """``per_shard`` tokens landing in each shard: {shard: [token, ...]}."""
    found: dict[int, list[str]] = {s: [] for s in range(shards)}
    i = 0
    while any(len(v) < per_shard for v in found.values()):
        token = f"{stem}-{i}"
        bucket = found[k_.shard_of(token, shards)]
        if len(bucket) < per_shard:
            bucket.append(token)
        i += 1
    return found


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in a Prometheus exposition."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name:
            return float(value)
    raise AssertionError(f"{name} not in /metrics")

"""Slow and idle clients: the shipped nginx configuration in front of ``payload-stats
web`` keeps a normal device's POST /stats fast, and ``web`` alone bounds what it can.

Debian's nginx (``apt-get install nginx``; .ci/run installs it) runs as this
test's own process with ``deploy/nginx.conf`` rendered for test ports: only the
``listen`` port, the upstream ``server`` address and the temporary paths change.
Attackers hold 200 connections open -- half never send a byte, half send one
header line a second -- reconnecting whenever they are closed, while probes post
payloads the way a device does (a new connection each).
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from payload_stats.buffer.live import top_rows
from payload_stats.config import Config
from tests.conftest import payload
from tests.support.servers import (
    ROOT,
    cli_environment,
    free_port,
    start_cli,
    stop,
    wait_for_port,
)

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("shards", [1], ids=["1shard"])]

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)


def started(proc: subprocess.Popen, port: int, log: Path) -> None:
    try:
        wait_for_port(port, proc)
    except (RuntimeError, TimeoutError):
        stop(proc)
        raise AssertionError(log.read_text(errors="replace")[-3000:]) from None


@pytest.fixture
def web(config: Config, tmp_path: Path) -> Iterator[int]:
    """``payload-stats web``, 2 workers x 8 threads, on a free port."""
    port = free_port()
    env = cli_environment(
        config,
        STATS_WEB_WORKERS="2",
        STATS_WEB_THREADS="8",
        STATS_LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    log = tmp_path / "web.log"
    proc = start_cli(env, "web", "--bind", f"127.0.0.1:{port}", log=log, new_session=True)
    started(proc, port, log)
    try:
        yield port
    finally:
        stop(proc)


def render(listen: int, upstream: int, prefix: Path) -> str:
    """deploy/nginx.conf with test ports and temporary paths under ``prefix``."""
    shipped = (ROOT / "deploy" / "nginx.conf").read_text()
    text, listens = re.subn(
        r"^(\s*)listen 8080\b", rf"\1listen 127.0.0.1:{listen}", shipped, flags=re.M
    )
    text, servers = re.subn(r"server web:8000;", f"server 127.0.0.1:{upstream};", text)
    assert (listens, servers) == (1, 1), "deploy/nginx.conf: listen 8080 and server web:8000"
    paths = "".join(
        f"    {name}_temp_path {prefix / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text, https = re.subn(r"^http \{\n", "http {\n" + paths, text, flags=re.M)
    assert https == 1
    return text


@pytest.fixture
def proxy(web: int, tmp_path: Path) -> Iterator[int]:
    """Debian's nginx with the shipped configuration, in front of ``web``."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(render(port, web, prefix))
    argv = [
        NGINX,
        "-p",
        str(prefix),
        "-c",
        str(conf),
        "-e",
        str(prefix / "error.log"),
        "-g",
        f"pid {prefix / 'nginx.pid'}; daemon off;",
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    started(proc, port, prefix / "error.log")
    try:
        yield port
    finally:
        stop(proc)


# --- clients ---------------------------------------------------------------------------------


class Attack:
    """``idle`` connections that never send a byte and ``slow`` ones sending one
    header line every ``period`` seconds, each reopened as soon as it is closed."""

    def __init__(self, port: int, idle: int, slow: int, period: float = 1.0) -> None:
        self.port = port
        self.stop = threading.Event()
        self.opened = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._idle, daemon=True) for _ in range(idle)] + [
            threading.Thread(target=self._slow, args=(period,), daemon=True) for _ in range(slow)
        ]

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
        except OSError:
            time.sleep(0.2)
            return None
        with self.lock:
            self.opened += 1
        return sock

    def _idle(self) -> None:
        while not self.stop.is_set():
            sock = self._connect()
            if sock is None:
                continue
            with sock:
                while not self.stop.is_set():
                    try:
                        if sock.recv(1) == b"":
                            break  # closed by the server: reconnect
                    except TimeoutError:
                        continue
                    except OSError:
                        break

    def _slow(self, period: float) -> None:
        while not self.stop.is_set():
            sock = self._connect()
            if sock is None:
                continue
            with sock:
                try:
                    sock.sendall(b"POST /stats HTTP/1.1\r\nHost: device\r\n")
                    line = 0
                    while not self.stop.wait(period):
                        sock.sendall(b"X-Slow-%d: 1\r\n" % line)
                        line += 1
                except OSError:
                    pass  # closed by the server: reconnect

    def __enter__(self) -> Attack:
        for t in self.threads:
            t.start()
        time.sleep(1.5)  # every connection open, the slow ones past their first lines
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/stats",
            body,
            {"Content-Type": "application/json", "Connection": "close", **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def probes(port: int, count: int, tag: str) -> tuple[list[float], int, int]:
    """``count`` device posts, one after the other: (latencies, cdn accepted, failures)."""
    latencies, cdn, failures = [], 0, 0
    for i in range(count):
        body = json.dumps(payload(token=f"{tag}-{i}", customer=tag, cdn=i + 1)).encode()
        began = time.monotonic()
        try:
            status, _ = post(port, body)
        except OSError:
            status = -1
        latencies.append(time.monotonic() - began)
        if status == 200:
            cdn += i + 1
        else:
            failures += 1
        time.sleep(0.005)
    return latencies, cdn, failures


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]


def counted_cdn(redis, config: Config, customer: str) -> int:
    found = top_rows(redis, config, customer=customer, limit=None)
    assert found.complete
    return sum(r.cdn for r in found.rows)


# --- through the proxy --------------------------------------------------------------------------


def test_the_proxy_keeps_devices_fast_under_200_slow_and_idle_connections(proxy, redis, config):
    quiet, quiet_cdn, quiet_failures = probes(proxy, 50, "quiet")
    with Attack(proxy, idle=100, slow=100) as attack:
        latencies, cdn, failures = probes(proxy, 200, "attacked")
        opened = attack.opened
    print(
        f"through nginx: quiet p99 {p99(quiet) * 1000:.1f} ms; with 100 idle + 100 slow "
        f"connections ({opened} opened): p99 {p99(latencies) * 1000:.1f} ms, "
        f"{failures} failures"
    )
    assert opened >= 200
    assert quiet_failures == failures == 0
    assert p99(latencies) < 1.0
    # Nothing lost: every probe is in Redis, exactly.
    assert counted_cdn(redis, config, "quiet") == quiet_cdn
    assert counted_cdn(redis, config, "attacked") == cdn == sum(range(1, 201))


def test_the_proxy_passes_gzip_bodies_and_answers_its_own_errors_in_json(proxy, redis, config):
    body = gzip.compress(json.dumps(payload(token="gz", customer="gzip", cdn=77)).encode())
    status, answer = post(proxy, body, {"Content-Encoding": "gzip"})
    assert (status, json.loads(answer)) == (200, {"accepted": 1, "duplicates": 0})
    assert counted_cdn(redis, config, "gzip") == 77
    # The app checks and decompresses gzip: a broken one is its 400, not nginx's.
    status, answer = post(proxy, b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and json.loads(answer)["error"] == "invalid_gzip"
    # Above STATS_MAX_BODY_BYTES' default, nginx refuses it itself, in JSON.
    status, answer = post(proxy, b" " * (1024 * 1024 + 1))
    assert status == 413 and json.loads(answer)["error"] == "request_entity_too_large"
    status, answer = post(proxy, b" " * (1024 * 1024 - 10) + b"{}")
    assert status == 400 and json.loads(answer)["error"] == "invalid_payload"


# --- web alone ----------------------------------------------------------------------------------


def test_web_alone_closes_a_request_head_that_takes_too_long(web):
    sock = socket.create_connection(("127.0.0.1", web), timeout=15)
    with sock:
        sock.sendall(b"POST /stats HTTP/1.1\r\nHost: device\r\n")
        began = time.monotonic()
        closed_after = None
        for line in range(12):
            time.sleep(1)
            try:
                sock.sendall(b"X-Slow-%d: 1\r\n" % line)
            except OSError:
                closed_after = time.monotonic() - began
                break
        if closed_after is None:
            sock.settimeout(3)
            try:
                assert sock.recv(1) == b""
            except OSError:
                pass
            closed_after = time.monotonic() - began
    # STATS_WEB_HEADER_TIMEOUT_SECONDS (5 s by default), then shut down.
    assert 4 <= closed_after < 11


def test_web_alone_withstands_idle_connections_and_fewer_slow_clients_than_threads(
    web, redis, config
):
    """What README "Slow clients" promises for web without the proxy: connections
    that never send a byte hold no thread; slow clients do, each for at most the
    header timeout, so fewer of them than the threads leave ingest working."""
    with Attack(web, idle=200, slow=6):
        latencies, cdn, failures = probes(web, 100, "direct")
    print(f"web alone, 200 idle + 6 slow: p99 {p99(latencies) * 1000:.1f} ms, {failures} failures")
    assert failures == 0
    assert p99(latencies) < 1.0
    assert counted_cdn(redis, config, "direct") == cdn

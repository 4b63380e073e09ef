"""The availability phase (``--only availability``): what attackers and a locked
table do to a normal device's POST /stats, and what GET /stats/live costs.

Every ingest figure is the p99 of probes -- one device payload each, on a new
connection, one after the other -- as a ratio to the p99 of the same probes on
the quiet service in the same run:

- with N connections open (half never send a byte, half send a header line
  every second; each reopened when closed), straight to gunicorn and through
  nginx with deploy/nginx.conf (Debian's nginx, run as our own process);
- with ``stats`` locked ACCESS EXCLUSIVE in another connection while readers
  keep calling GET /stats (and, to tell the lock from the readers' CPU, the
  same readers with the table free).

A probe that fails (timeout, error, non-2xx) counts as the probe timeout in the
percentiles, and a phase stops after ``PHASE_SECONDS`` whatever it has sent.
The live figure is GET /stats/live with ``live_keys`` counter hashes in Redis,
as a ratio to one unbounded read of the same counters (``max_keys`` = all).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
from redis import Redis

from payload_stats.buffer import ingest
from payload_stats.buffer.live import top_rows
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config

from .servers import ROOT, free_port

PROBE_TIMEOUT = 2.0
PHASE_SECONDS = 30.0
READERS = 20


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


def render_nginx(listen: int, upstream: int, prefix: Path) -> str:
    """deploy/nginx.conf with local ports and its temporary paths under ``prefix``."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    text = re.sub(r"^(\s*)listen 8080\b", rf"\1listen 127.0.0.1:{listen}", text, flags=re.M)
    text = text.replace("server web:8000;", f"server 127.0.0.1:{upstream};")
    paths = "".join(
        f"    {name}_temp_path {prefix / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return re.sub(r"^http \{\n", "http {\n" + paths, text, count=1, flags=re.M)


@contextmanager
def nginx(upstream: int, prefix: Path) -> Iterator[int]:
    """nginx with the shipped configuration in front of ``upstream``; yields its port."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx(port, upstream, prefix))
    log = prefix / "error.log"
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(log)]
        + ["-g", f"pid {prefix / 'nginx.pid'}; daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Attack:
    """``idle`` connections that never send a byte and ``slow`` ones sending a
    header line every ``period`` seconds, each reopened as soon as it is closed."""

    def __init__(self, port: int, idle: int, slow: int, period: float = 1.0) -> None:
        self.port = port
        self.period = period
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._idle, daemon=True) for _ in range(idle)]
        self.threads += [threading.Thread(target=self._slow, daemon=True) for _ in range(slow)]

    def _connect(self) -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
        except OSError:
            self.stop.wait(0.2)
            return None

    def _idle(self) -> None:
        while not self.stop.is_set():
            sock = self._connect()
            if sock is None:
                continue
            with sock:
                while not self.stop.is_set():
                    try:
                        if sock.recv(1) == b"":
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break

    def _slow(self) -> None:
        while not self.stop.is_set():
            sock = self._connect()
            if sock is None:
                continue
            with sock:
                try:
                    sock.sendall(b"POST /stats HTTP/1.1\r\nHost: device\r\n")
                    line = 0
                    while not self.stop.wait(self.period):
                        sock.sendall(b"X-Slow-%d: 1\r\n" % line)
                        line += 1
                except OSError:
                    pass

    def __enter__(self) -> Attack:
        for t in self.threads:
            t.start()
        time.sleep(1.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def _request(port: int, method: str, path: str, body: bytes | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        headers = {"Content-Type": "application/json", "Connection": "close"}
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _percentile(ordered: list[float], pct: float) -> float:
    return ordered[max(0, -(-len(ordered) * pct // 100) - 1)] if ordered else 0.0


def probes(port: int, count: int, tag: str) -> dict[str, Any]:
    """``count`` device payloads, one after the other (``PHASE_SECONDS`` at most)."""
    latencies, failures = [], 0
    stop_at = time.monotonic() + PHASE_SECONDS
    for i in range(count):
        if time.monotonic() > stop_at:
            break
        body = json.dumps(
            {
                "token": f"{tag}-{i}",
                "customer": "probe",
                "content": tag,
                "timespan": 30000,
                "p2p": 0,
                "cdn": 1,
                "sessionDuration": 30000,
            }
        ).encode()
        began = time.monotonic()
        try:
            ok = _request(port, "POST", "/stats", body) == 200
        except (OSError, http.client.HTTPException):
            ok = False
        took = time.monotonic() - began
        if not ok:
            failures += 1
            took = max(took, PROBE_TIMEOUT)
        latencies.append(took)
        time.sleep(0.005)
    latencies.sort()
    return {
        "probes": len(latencies),
        "failures": failures,
        "p50_ms": round(_percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 2),
    }


@contextmanager
def readers(port: int, count: int) -> Iterator[list[tuple[float, int]]]:
    """``count`` threads calling GET /stats in a loop; yields their (seconds, status)."""
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                status = _request(port, "GET", "/stats?limit=10", None)
            except (OSError, http.client.HTTPException):
                status = -1
            seen.append((time.monotonic() - began, status))

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        for t in threads:
            t.join(10)


@contextmanager
def locked_stats(database_url: str) -> Iterator[None]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE stats IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        conn.rollback()
        conn.close()


def _read_summary(seen: list[tuple[float, int]]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for _, status in seen:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    slowest = max((s for s, _ in seen), default=0.0)
    return {"reads": len(seen), "statuses": statuses, "slowest_s": round(slowest, 2)}


def live_read(redis: Redis, config: Config, port: int, keys: int) -> dict[str, Any]:
    """GET /stats/live with ``keys`` counter hashes in the open window, against an
    unbounded read of the same counters."""
    scripts = Scripts(redis)
    now = time.time()
    for start in range(0, keys, 1000):
        batch = [
            {
                "token": f"live-{i}",
                "customer": f"customer-{i % 500}",
                "content": f"content-{i}",
                "timespan": 30000,
                "p2p": i,
                "cdn": i % 977,
                "sessionDuration": 30000,
            }
            for i in range(start, min(keys, start + 1000))
        ]
        ingest.record(redis, scripts, config, batch, now)
    timings = []
    body: dict[str, Any] = {}
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        began = time.monotonic()
        conn.request("GET", "/stats/live?limit=100")
        response = conn.getresponse()
        body = json.loads(response.read())
        timings.append(time.monotonic() - began)
        conn.close()
    full = []  # in this process: no HTTP, no budget
    for _ in range(2):
        began = time.monotonic()
        top_rows(redis, config, limit=100, max_keys=10**9, time_budget=None)
        full.append(time.monotonic() - began)
    return {
        "keys": keys,
        "bounded_ms": round(min(timings) * 1000, 1),
        "bounded_worst_ms": round(max(timings) * 1000, 1),
        "counters": body.get("counters"),
        "counters_read": body.get("counters_read"),
        "truncated": body.get("truncated"),
        "unbounded_ms": round(min(full) * 1000, 1),
    }


def run(
    direct_port: int,
    redis: Redis,
    config: Config,
    prefix: Path,
    *,
    slow_clients: int,
    count: int,
    live_keys: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every figure of the phase, against the project's gunicorn on ``direct_port``."""
    idle, slow = slow_clients // 2, slow_clients - slow_clients // 2
    results: dict[str, Any] = {"slow_clients": slow_clients, "idle": idle, "slow": slow}
    with nginx(direct_port, prefix) as proxied:
        for name, port in (("direct", direct_port), ("nginx", proxied)):
            probes(port, 20, f"warm-{name}")
            results[f"quiet_{name}"] = probes(port, count, f"quiet-{name}")
            log(f"  quiet, {name}: {results[f'quiet_{name}']}")
        for name, port in (("nginx", proxied), ("direct", direct_port)):
            with Attack(port, idle, slow):
                results[f"attacked_{name}"] = probes(port, count, f"attacked-{name}")
            log(f"  {idle} idle + {slow} slow, {name}: {results[f'attacked_{name}']}")
            if name == "direct":
                time.sleep(6)  # gunicorn closes what the attackers left (5 s timeouts)
    with readers(direct_port, READERS) as seen:
        time.sleep(1)
        seen.clear()
        results["readers_direct"] = probes(direct_port, count, "readers")
        results["reads_free"] = _read_summary(list(seen))
        with locked_stats(config.database_url):
            seen.clear()
            results["locked_direct"] = probes(direct_port, count, "locked")
            results["reads_locked"] = _read_summary(list(seen))
    log(f"  {READERS} readers, stats free: {results['readers_direct']}")
    log(f"  stats locked, {READERS} readers: {results['locked_direct']}")
    log(f"  reads while locked: {results['reads_locked']}")
    if live_keys:
        results["live"] = live_read(redis, config, direct_port, live_keys)
        log(f"  GET /stats/live at {live_keys:,} counters: {results['live']}")
    return results

"""Serving an app factory with the project's gunicorn settings, as a subprocess.

Every server -- the project and each peer -- runs
``python -m gunicorn -c python:payload_stats.web.gunicorn_conf --bind 127.0.0.1:PORT FACTORY``
so workers count, worker class and timeouts are the project's. ``WorkerSetup``
overrides them for every server alike (to compare worker classes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port, kill_group, port_open

ROOT = Path(__file__).resolve().parents[1]

PROJECT = "payload_stats.web.app:create_app()"
PROJECT_CONFIG = "python:payload_stats.web.gunicorn_conf"
PEERS = {
    "bare": "benchmarks.peers.bare:create_app()",
    "direct": "benchmarks.peers.direct:create_app()",
    "naive-pg": "benchmarks.peers.naive_pg:create_app()",
}


class ServerError(RuntimeError):
    """A server did not start; the message holds the tail of its log."""


@dataclass(frozen=True)
class WorkerSetup:
    """Overrides of the gunicorn settings; None keeps the project's."""

    worker_class: str | None = None
    workers: int | None = None
    threads: int | None = None

    def argv(self) -> list[str]:
        argv: list[str] = []
        if self.worker_class:
            argv += ["--worker-class", self.worker_class]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        return argv

    @property
    def label(self) -> str:
        if not (self.worker_class or self.workers or self.threads):
            return "project default"
        parts = [self.worker_class or "default", f"{self.workers or 'default'} workers"]
        if self.threads:
            parts.append(f"{self.threads} threads")
        return ", ".join(parts)

    @classmethod
    def parse(cls, text: str) -> WorkerSetup:
        """``CLASS[:WORKERS[xTHREADS]]``, e.g. ``sync:5``, ``gthread:2x4``, ``gevent``."""
        cls_name, _, count = text.partition(":")
        workers, _, threads = count.partition("x")
        return cls(
            cls_name or None, int(workers) if workers else None, int(threads) if threads else None
        )


class Server:
    """A gunicorn subprocess serving ``factory``; use as a context manager."""

    def __init__(
        self,
        name: str,
        factory: str,
        env: Mapping[str, str],
        setup: WorkerSetup | None = None,
        config: str = PROJECT_CONFIG,
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.factory = factory
        self.env = dict(env)
        self.setup = setup or WorkerSetup()
        self.config = config
        self.start_timeout = start_timeout
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()
        # payload_stats.web.gunicorn_conf makes a metrics directory per start and never
        # removes it; give each server one that stop() removes.
        self.metrics_dir = tempfile.TemporaryDirectory(prefix="bench-metrics-")
        self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", self.metrics_dir.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            self.config,
            *self.setup.argv(),
            "--bind",
            f"127.0.0.1:{self.port}",
            self.factory,
        ]

    def launch(self) -> None:
        """Start gunicorn without waiting for it."""
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        """Wait until gunicorn accepts connections. Raises ServerError (and stops it)."""
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self.name} did not start:\n{self.tail()}")
            time.sleep(0.05)

    def start(self) -> Server:
        """Start gunicorn and wait until it accepts connections. Raises ServerError."""
        self.launch()
        self.wait_ready()
        return self

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU seconds used so far by the workers (not the master)."""
        tick = os.sysconf("SC_CLK_TCK")
        user = system = 0.0
        for pid in self.worker_pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue  # a worker that just exited
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
        return user, system

    def terminate(self) -> None:
        """SIGTERM the master: a graceful shutdown, not waited for."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        """Wait for the master to exit; SIGKILL its group if it lingers."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped()
        self.metrics_dir.cleanup()

    def describe(self) -> str:
        """What gunicorn runs, e.g. "5 sync workers", from its log and its children."""
        self.log.seek(0)
        found = re.search(r"Using worker: (\S+)", self.log.read().decode(errors="replace"))
        threads = f" x {self.setup.threads} threads" if self.setup.threads else ""
        return f"{len(self.worker_pids())} {found[1] if found else '?'} workers{threads}"

    def tail(self, lines: int = 30) -> str:
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()


def start_all(servers: list[Server]) -> None:
    """Launch every server at once, then wait for each. Raises ServerError (all stopped)."""
    for server in servers:
        server.launch()
    try:
        for server in servers:
            server.wait_ready()
    except ServerError:
        stop_all(servers)
        raise


def stop_all(servers: list[Server]) -> None:
    """Stop every server, all at once."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.wait_stopped()
        server.metrics_dir.cleanup()
        server.log.close()


def gevent_available() -> bool:
    """Whether gunicorn's gevent worker can run here (gevent is not a project dependency)."""
    import importlib.util

    return importlib.util.find_spec("gevent") is not None

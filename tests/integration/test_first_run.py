"""A newcomer's first commands: the listen address checked before anything starts,
``.env``, one clear line when nothing runs, no log noise, and Ctrl-C at any moment
of ``serve`` (during the embedded servers' start, the workers' boot, while
serving, while stopping) ending without a traceback or a worker killed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from payload_stats.config import Config
from payload_stats.ops import embedded
from tests.support.servers import (
    cli_environment,
    descendants,
    free_port,
    http,
    kill_group,
    run_cli,
    running,
    start_cli,
    wait_for,
)


def _only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def listening():
    """A port something listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_serve_refuses_a_port_in_use_before_starting_anything(tmp_path: Path, listening: int):
    started = time.monotonic()
    done = run_cli(cli_environment(), "serve", "--bind", f"127.0.0.1:{listening}", cwd=tmp_path)
    assert time.monotonic() - started < 10
    assert done.returncode == 2
    assert done.stdout == ""
    assert _only_line(done.stderr) == (
        f"payload-stats: error: port {listening} is in use; use --bind or STATS_BIND"
    )
    assert not (tmp_path / "var").exists()  # no embedded server was started


def test_serve_refuses_a_port_in_use_named_by_stats_bind(tmp_path: Path, listening: int):
    env = cli_environment(STATS_BIND=f"127.0.0.1:{listening}")
    done = run_cli(env, "serve", cwd=tmp_path)
    assert done.returncode == 2
    assert _only_line(done.stderr).endswith(f"port {listening} is in use; use --bind or STATS_BIND")
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        (
            "nonsense",
            "'nonsense' is not an address to listen on: use HOST:PORT, e.g. 127.0.0.1:8000",
        ),
        ("127.0.0.1:99999", "'127.0.0.1:99999' is not an address to listen on"),
        ("no-such-host.invalid:8000", "cannot resolve the host 'no-such-host.invalid'"),
    ],
)
def test_serve_refuses_an_address_it_cannot_use(tmp_path: Path, bind: str, message: str):
    done = run_cli(cli_environment(), "serve", "--bind", bind, cwd=tmp_path)
    assert done.returncode == 2
    assert _only_line(done.stderr).startswith(f"payload-stats: error: {message}")
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("command", ["flush", "live", "init-db", "scheduler"])
def test_a_command_with_nothing_to_talk_to_says_what_to_do(tmp_path: Path, command: str):
    done = run_cli(cli_environment(), command, cwd=tmp_path)
    assert done.returncode == 1  # as the README's table of commands says
    name = "DATABASE_URL" if command == "init-db" else "REDIS_URL"
    assert _only_line(done.stderr) == (
        f"payload-stats: error: no {name} and no running serve in var/: start "
        f"payload-stats serve (it starts embedded servers), or set {name} (environment or .env)"
    )


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path):
    (tmp_path / ".env").write_text("# settings\nSTATS_LOG_LEVEL=bogus\n")
    env = cli_environment()
    del env["STATS_ENV_FILE"]
    done = run_cli(env, "flush", cwd=tmp_path)
    assert done.returncode == 2
    assert "STATS_LOG_LEVEL: must be one of" in _only_line(done.stderr)

    done = run_cli({**env, "STATS_LOG_LEVEL": "INFO"}, "flush", cwd=tmp_path)
    assert done.returncode == 1
    assert "no REDIS_URL" in _only_line(done.stderr)

    other = tmp_path / "other.env"
    other.write_text("STATS_LOG_LEVEL=also-bogus\n")
    done = run_cli({**env, "STATS_ENV_FILE": str(other)}, "flush", cwd=tmp_path)
    assert "(got 'also-bogus')" in _only_line(done.stderr)
    done = run_cli({**env, "STATS_ENV_FILE": str(tmp_path / "missing")}, "flush", cwd=tmp_path)
    assert done.returncode == 2
    assert _only_line(done.stderr).startswith("payload-stats: error: STATS_ENV_FILE: cannot read")


def test_commands_attach_to_a_running_serve_quietly_with_its_settings(
    tmp_path: Path, config: Config, pool
):
    """What ``serve`` publishes in embedded.env (its URLs and settings) is used
    without a word at INFO: ``flush`` prints its result and nothing else."""
    state = tmp_path / "var" / embedded.STATE_FILE
    state.parent.mkdir()
    state.write_text(
        f"REDIS_URL={config.redis_url}\nDATABASE_URL={config.database_url}\n"
        f"STATS_WINDOW_SECONDS=10\nSTATS_FLUSH_GRACE_SECONDS=1\n"
        f"STATS_FLUSH_INTERVAL_SECONDS=2\nSTATS_SHARDS=3\nSTATS_KEY_PREFIX={config.key_prefix}\n"
    )
    done = run_cli(cli_environment(), "flush", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "nothing to flush\n", "")
    done = run_cli(cli_environment(), "settings", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "STATS_WINDOW_SECONDS: here 10, recorded 10\n" in done.stdout
    assert "STATS_SHARDS: here 3, recorded 3\n" in done.stdout

    # serve --demo publishes under var/demo; found when var/ itself has no serve.
    demo = tmp_path / "var" / embedded.DEMO_DIR / embedded.STATE_FILE
    demo.parent.mkdir()
    state.rename(demo)
    done = run_cli(cli_environment(), "flush", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "nothing to flush\n", "")
    # A setting given explicitly is not replaced: it is compared, and refused.
    done = run_cli(cli_environment(STATS_WINDOW_SECONDS="300"), "flush", cwd=tmp_path)
    assert done.returncode == 2
    assert "STATS_WINDOW_SECONDS is 300 here but this deployment recorded 10" in done.stderr


# --- Ctrl-C ----------------------------------------------------------------------------------


def _serve(workdir: Path, port: int, *extra: str) -> subprocess.Popen:
    env = cli_environment(STATS_WEB_WORKERS="2")
    # Its own process group, like a shell's foreground job: Ctrl-C is SIGINT to the group.
    return start_cli(
        env,
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        *extra,
        cwd=workdir,
        log=workdir / "serve.log",
        new_session=True,
    )


def _log(workdir: Path) -> str:
    path = workdir / "serve.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _ctrl_c(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)


def _ended_cleanly(workdir: Path, proc: subprocess.Popen, tree: dict[int, str]) -> int:
    try:
        code = proc.wait(60)
    finally:
        kill_group(proc)
    log = _log(workdir)
    for bad in ("Traceback", "SIGKILL", "was sent", "Aborted", "Error"):
        assert bad not in log, log
    wait_for(lambda: not any(running(p, t) for p, t in tree.items()), 10, "no process left")
    data = workdir / "var"
    assert not (data / embedded.STATE_FILE).exists()
    assert not (data / "postgres" / "postmaster.pid").exists(), log
    with (data / embedded.LOCK_FILE).open("a") as handle:  # free for the next serve
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return code


def _tree_until(proc: subprocess.Popen, condition, what: str) -> dict[int, str]:
    """The processes under ``proc`` seen while waiting for ``condition``."""
    tree: dict[int, str] = {}

    def check():
        assert proc.poll() is None, "serve exited"
        tree.update(descendants(proc.pid))
        return condition()

    wait_for(check, 90, what, interval=0.01)
    tree.update(descendants(proc.pid))
    return tree


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_serve_stops_it_cleanly(tmp_path: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    # 1. During the embedded servers' start (initdb, pg_ctl): held, then a clean stop.
    proc = _serve(tmp_path, port)
    tree = _tree_until(proc, lambda: "starting the embedded" in _log(tmp_path), "the start")
    time.sleep(0.3)
    _ctrl_c(proc)
    assert _ended_cleanly(tmp_path, proc, tree) == 130
    assert "stopped before serving" in _log(tmp_path)

    # 2. While gunicorn boots its workers.
    (tmp_path / "serve.log").unlink()
    proc = _serve(tmp_path, port)
    tree = _tree_until(proc, lambda: "Booting worker" in _log(tmp_path), "a worker booting")
    _ctrl_c(proc)
    assert _ended_cleanly(tmp_path, proc, tree) == 0

    # 3. While serving (and the data directory still good after the stops above).
    (tmp_path / "serve.log").unlink()
    proc = _serve(tmp_path, port)
    tree = _tree_until(proc, lambda: "serving on" in _log(tmp_path), "serving")
    assert http("GET", f"{url}/healthz")[0] == 200
    _ctrl_c(proc)
    assert _ended_cleanly(tmp_path, proc, tree) == 0

    # 4. While stopping: a second Ctrl-C changes nothing.
    (tmp_path / "serve.log").unlink()
    proc = _serve(tmp_path, port)
    tree = _tree_until(proc, lambda: "serving on" in _log(tmp_path), "serving")
    _ctrl_c(proc)
    time.sleep(0.2)
    _ctrl_c(proc)
    assert _ended_cleanly(tmp_path, proc, tree) == 0
    log = _log(tmp_path)
    assert log.index("serving on") > log.index("Listening at")  # printed once it answers


@pytest.mark.slow
def test_serve_announces_the_address_only_once_it_answers(tmp_path: Path):
    port = free_port()
    proc = _serve(tmp_path, port)
    try:
        wait_for(lambda: "serving on" in _log(tmp_path), 90, "serving", interval=0.05)
        # The line is printed after /healthz answered: it answers now.
        assert http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
        log = _log(tmp_path)
        assert f"payload-stats: serving on http://127.0.0.1:{port}\n" in log
        assert f"  dashboard: http://127.0.0.1:{port}/dashboard\n" in log
        assert "embedded_servers_started" not in log  # the URLs are in the serving lines
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        kill_group(proc)

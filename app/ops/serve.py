"""``payload-stats serve``: embedded servers if need be, then web, scheduler (and demo).

The order, and what a Ctrl-C does at each step (docs/deployment.md, "Stopping serve"):

1. the listen address is checked (one line and exit 2 if it cannot be used);
   nothing has started yet;
2. the embedded servers start, in sessions of their own (``initdb`` and
   ``pg_ctl`` are never cut half-way); a signal that came meanwhile stops
   everything right after (exit 130);
3. migrations and the start checks; a signal stops before any child starts;
4. web, scheduler and demo run in sessions of their own; a signal sends each
   one SIGTERM (gunicorn drains, the scheduler finishes its flush) and exit 0;
5. the embedded servers stop.

"serving on ..." is printed once ``GET /healthz`` answers on the address.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from ..buffer.connection import redis_client
from ..config import Config
from ..postgres.pool import database_pool
from . import embedded, processes, serving
from .cli_support import REFUSED, fail, load_config, start_checks

#: ``serve --demo``'s window length unless --window says otherwise.
DEMO_WINDOW_SECONDS = 10


def window_settings(window: int) -> dict[str, str]:
    """STATS_WINDOW_SECONDS and a grace and flush interval that suit it: a tenth and
    a fifth of the window, at most the defaults (5 s, 10 s), the interval at least 1 s."""
    grace = min(5.0, window / 10)
    interval = max(1.0, min(10.0, window / 5))
    return {
        "STATS_WINDOW_SECONDS": str(window),
        "STATS_FLUSH_GRACE_SECONDS": f"{grace:g}",
        "STATS_FLUSH_INTERVAL_SECONDS": f"{interval:g}",
    }


def demo_data_dir(environ: dict[str, str] | os._Environ) -> str:
    return str(Path(environ.get("STATS_DATA_DIR", "").strip() or "var") / embedded.DEMO_DIR)


def run(*, bind: str | None, workers: int | None, window: int | None, demo: bool) -> None:
    if demo and window is None:
        window = DEMO_WINDOW_SECONDS
    if window is not None:
        settings = window_settings(window)
        os.environ["STATS_WINDOW_SECONDS"] = settings.pop("STATS_WINDOW_SECONDS")
        for name, value in settings.items():  # unless set explicitly
            if not os.environ.get(name, "").strip():
                os.environ[name] = value
    if demo:
        os.environ["STATS_DATA_DIR"] = demo_data_dir(os.environ)
    config = load_config(attach=False)
    if demo and (config.redis_url or config.database_url):
        fail(
            f"serve --demo runs on embedded servers of its own under {config.data_dir}: "
            "unset REDIS_URL and DATABASE_URL (commented out in .env?), or run "
            "payload-stats demo --url URL against a service you started",
            REFUSED,
        )
    if config.redis_cluster and not config.redis_url:
        fail(
            "STATS_REDIS_CLUSTER=1 needs REDIS_URL naming a node of the cluster "
            "(the embedded Redis is a single server)",
            REFUSED,
        )
    address = bind or config.bind
    try:
        serving.check_address(address)
    except serving.AddressError as exc:
        fail(str(exc), REFUSED)
    stop = processes.StopFlag().install()
    try:
        code = _with_servers(config, address, workers, demo, stop)
    finally:
        stop.restore()
    sys.exit(code)


def _interrupted(stop: processes.StopFlag) -> int:
    click.echo("payload-stats: stopped before serving", err=True)
    return processes.exit_code_for(stop.signal or 2)


def _with_servers(
    config: Config, address: str, workers: int | None, demo: bool, stop: processes.StopFlag
) -> int:
    servers = embedded.EmbeddedServers(config)

    def starting(names: list[str]) -> None:
        click.echo(
            f"payload-stats: starting the embedded {' and '.join(names)} under "
            f"{servers.data_dir} ...",
            err=True,
        )

    try:
        servers.start(starting)
    except embedded.EmbeddedError as exc:
        if stop:
            return _interrupted(stop)
        fail(str(exc))
    try:
        if stop:
            return _interrupted(stop)
        return _serve(servers.config, address, workers, demo, stop)
    finally:
        servers.stop()


def _serve(
    config: Config, address: str, workers: int | None, demo: bool, stop: processes.StopFlag
) -> int:
    # A PostgreSQL down is tolerated: the scheduler keeps retrying, and
    # payloads are buffered in Redis meanwhile.
    start_checks(
        config,
        redis_client(config),
        database_pool(config, 1),
        migrate_schema=True,
        tolerate_down=True,
    )
    if stop:
        return _interrupted(stop)
    python = [sys.executable, "-m", "payload_stats"]
    web = [*python, "web", "--bind", address]
    if workers:
        web += ["--workers", str(workers)]
    commands = [web, [*python, "scheduler"]]
    base_url = serving.probe_url(address).removesuffix("/healthz")
    if demo:
        commands.append([*python, "demo", "--url", base_url])
    env = embedded.environment(config)
    env.setdefault("STATS_LOG_FORMAT", config.log_format)  # a terminal: text unless asked

    def announce() -> None:
        lines = [
            f"payload-stats: serving on http://{address}",
            f"  dashboard: {base_url}/dashboard",
            f"  REDIS_URL={config.redis_url}",
            f"  DATABASE_URL={config.database_url}",
        ]
        if config.window_seconds != Config.window_seconds:
            due = config.flush_grace_seconds + config.flush_interval_seconds
            lines.append(
                f"  {config.window_seconds}-second windows: each one is in PostgreSQL "
                f"within {due:g} s of its end"
            )
        if demo:
            lines.append("  demo devices are posting (payload-stats demo); Ctrl-C stops all")
        click.echo("\n".join(lines), err=True)

    def late(waited: float) -> None:
        click.echo(
            f"payload-stats: warning: {base_url}/healthz has not answered for {waited:.0f} s",
            err=True,
        )

    started = time.monotonic()
    code = processes.supervise(
        commands, env, tick=serving.Announcer(address, announce, late), stopped=lambda: bool(stop)
    )
    if code and time.monotonic() - started < 5:
        click.echo(
            "payload-stats: error: a process failed to start; see the messages above", err=True
        )
    return code

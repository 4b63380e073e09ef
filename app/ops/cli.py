"""The ``payload-stats`` command."""

from __future__ import annotations

import os
import sys
import time

import click
import psycopg2
from marshmallow import ValidationError
from redis.exceptions import RedisError

from .. import logs
from ..buffer.connection import redis_client
from ..config import Config, ConfigError, check_bind
from ..flush import failpoints, scheduler
from ..flush.flusher import FlushReport, flush_once
from ..flush.lock import flush_with_lock
from ..logs import one_line
from ..postgres.migrations import migrate
from ..postgres.pool import database_pool, flush_pool
from . import embedded, processes


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"payload-stats: error: {message}", err=True)
    sys.exit(code)


def _config(*, attach: bool = True) -> Config:
    """The configuration; unset URLs are taken from a running embedded ``serve``."""
    try:
        config = Config.from_env()
    except ConfigError as exc:
        _fail(str(exc), 2)
    logs.configure(config)
    return embedded.attach(config) if attach else config


def _require(config: Config, *names: str) -> None:
    for name in names:
        if not getattr(config, name.lower()):
            _fail(
                f"{name} is not set (see .env.example; `payload-stats serve` "
                "starts embedded servers when it is unset)",
                2,
            )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="payload-stats")
def cli() -> None:
    """Video-player telemetry into billing-grade traffic statistics."""


@cli.command("init-db")
def init_db() -> None:
    """Create or migrate the PostgreSQL schema (idempotent)."""
    config = _config()
    _require(config, "DATABASE_URL")
    try:
        applied = migrate(database_pool(config, 1))
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    click.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@cli.command()
def flush() -> None:
    """Flush every closed window now, print what was written, exit.

    Exits 1 when Redis or PostgreSQL cannot be reached; nothing is lost then.
    """
    config = _config()
    _require(config, "REDIS_URL", "DATABASE_URL")
    failpoint = failpoints.from_config(config.failpoint)
    redis = redis_client(config)
    pool = flush_pool(config, 1)
    try:
        migrate(pool)
        # Wait for a running scheduler flush; if it is stuck, go ahead anyway:
        # the ledger keeps two flushers exact, the lock only saves work.
        report = flush_with_lock(
            redis, pool, config, wait_seconds=config.flush_lock_seconds, failpoint=failpoint
        )
        if report is None:
            report = flush_once(redis, pool, config, failpoint=failpoint)
    except RedisError as exc:
        _fail(f"Redis: {one_line(exc)}")
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    click.echo(_summary(report))


def _summary(report: FlushReport) -> str:
    if not report.windows:
        return "nothing to flush"
    lines = [
        f"flushed {len(report.windows)} window(s), {report.rows} row(s) "
        f"in {report.duration_seconds:.3f}s (flush {report.flush_id})"
    ]
    for w in report.windows:
        lines.append(
            f"  {w.end.strftime('%Y-%m-%dT%H:%M:%SZ')}  rows={w.written.rows} "
            f"cdn={w.written.cdn} p2p={w.written.p2p} sessions={w.written.sessions} "
            f"payloads={w.written.payloads} lag={w.lag_seconds:.1f}s"
        )
    return "\n".join(lines)


@cli.command("scheduler")
def scheduler_command() -> None:
    """Run the flush scheduler (one per deployment is enough; more are safe)."""
    os.environ.setdefault("STATS_LOG_FORMAT", "json")
    config = _config()
    _require(config, "REDIS_URL", "DATABASE_URL")
    scheduler.run(
        redis_client(config),
        flush_pool(config, 2),
        config,
        failpoints.from_config(config.failpoint),
    )


@cli.command()
@click.option("--once", is_flag=True, help="Print one table and exit (for scripts).")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Rows shown, by traffic.",
)
@click.option("--customer", help="Only this customer.")
@click.option("--content", help="Only this content.")
def live(once: bool, limit: int, customer: str | None, content: str | None) -> None:
    """Watch the open window's traffic, refreshed every second."""
    from . import terminal  # rich is only needed here

    config = _config()
    _require(config, "REDIS_URL")
    try:
        terminal.run(
            redis_client(config),
            config,
            once=once,
            limit=limit,
            customer=customer,
            content=content,
        )
    except RedisError as exc:
        _fail(f"Redis: {one_line(exc)}")


def _gunicorn_argv(bind: str | None, workers: int | None) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:payload_stats.web.gunicorn_conf"]
    if bind:
        argv += ["--bind", bind]
    if workers:
        argv += ["--workers", str(workers)]
    return argv + ["payload_stats.web.app:create_app()"]


@cli.command()
@click.option("--bind", metavar="HOST:PORT", help="Listen address [STATS_BIND, 127.0.0.1:8000].")
@click.option("--workers", type=click.IntRange(1), help="Gunicorn workers [STATS_WEB_WORKERS].")
def web(bind: str | None, workers: int | None) -> None:
    """Run the HTTP service (gunicorn; honours GUNICORN_CMD_ARGS)."""
    config = _config()
    _require(config, "REDIS_URL")
    if bind:
        try:
            check_bind(bind)
        except ValidationError as exc:
            _fail(f"--bind: {' '.join(exc.messages)}", 2)
    argv = _gunicorn_argv(bind, workers)
    os.environ.setdefault("STATS_LOG_FORMAT", "json")  # one object per line under gunicorn
    os.execv(argv[0], argv)


@cli.command()
@click.option("--bind", metavar="HOST:PORT", help="Listen address [STATS_BIND, 127.0.0.1:8000].")
@click.option("--workers", type=click.IntRange(1), help="Gunicorn workers [STATS_WEB_WORKERS].")
def serve(bind: str | None, workers: int | None) -> None:
    """Run the HTTP service and the flush scheduler until SIGTERM/SIGINT.

    With REDIS_URL or DATABASE_URL unset, starts embedded servers for them
    under STATS_DATA_DIR (pip install 'payload-stats[embedded]').
    """
    config = _config(attach=False)
    try:
        with embedded.EmbeddedServers(config) as servers:
            code = _serve(servers.config, bind, workers)
    except embedded.EmbeddedError as exc:
        _fail(str(exc))
    sys.exit(code)


def _serve(config: Config, bind: str | None, workers: int | None) -> int:
    try:
        migrate(database_pool(config, 1))
    except psycopg2.Error as exc:
        # The scheduler keeps retrying; payloads are buffered in Redis meanwhile.
        click.echo(f"payload-stats: warning: PostgreSQL: {one_line(exc)}", err=True)
    web_argv = [sys.executable, "-m", "payload_stats", "web"]
    if bind:
        web_argv += ["--bind", bind]
    if workers:
        web_argv += ["--workers", str(workers)]
    click.echo(
        f"payload-stats: serving on http://{bind or config.bind}\n"
        f"  REDIS_URL={config.redis_url}\n  DATABASE_URL={config.database_url}",
        err=True,
    )
    env = embedded.environment(config)
    env.setdefault("STATS_LOG_FORMAT", config.log_format)  # a terminal: text unless asked
    started = time.monotonic()
    code = processes.supervise(
        [web_argv, [sys.executable, "-m", "payload_stats", "scheduler"]], env
    )
    if code and time.monotonic() - started < 5:
        click.echo(
            "payload-stats: error: a process failed to start; see the messages above", err=True
        )
    return code


def main() -> None:
    cli(prog_name="payload-stats")

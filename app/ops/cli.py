"""The ``payload-stats`` command: its group, and the commands that run the service
(``serve``, ``web``, ``scheduler``), flush it and watch it. Operator and history
commands are in ``admin_commands`` and ``history_commands``."""

from __future__ import annotations

import os
import sys

import click
import psycopg2
from marshmallow import ValidationError
from redis.exceptions import RedisError

from ..buffer.connection import redis_client
from ..config import check_bind
from ..flush import failpoints, scheduler
from ..flush.flusher import FlushReport, flush_once
from ..flush.lock import flush_with_lock
from ..logs import one_line
from ..postgres import quarantine as quarantine_rows
from ..postgres.migrations import migrate
from ..postgres.pool import database_pool, flush_pool
from . import admin_commands, history_commands
from .cli_support import QUARANTINED, REFUSED, fail, load_config, require, start_checks
from .demo import demo_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="payload-stats")
def cli() -> None:
    """Video-player telemetry into billing-grade traffic statistics."""


cli.add_command(demo_command)
for command in (
    admin_commands.quarantine,
    admin_commands.settings,
    history_commands.import_command,
    history_commands.export,
    history_commands.verify,
):
    cli.add_command(command)


@cli.command("init-db")
def init_db() -> None:
    """Create or migrate the PostgreSQL schema (idempotent)."""
    config = load_config()
    require(config, "DATABASE_URL")
    pool = database_pool(config, 1)
    try:
        applied = migrate(pool)
    except psycopg2.Error as exc:
        fail(f"PostgreSQL: {one_line(exc)}")
    start_checks(config, redis_client(config) if config.redis_url else None, pool)
    click.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@cli.command()
def flush() -> None:
    """Flush every closed window now, print what was written, exit.

    Exits 1 when Redis or PostgreSQL cannot be reached (nothing is lost then),
    2 when refused as configured, 3 when isolated rows wait for an operator.
    """
    config = load_config()
    require(config, "REDIS_URL", "DATABASE_URL")
    failpoint = failpoints.from_config(config.failpoint)
    redis = redis_client(config)
    pool = flush_pool(config, 1)
    start_checks(config, redis, pool, migrate_schema=True)
    try:
        # Wait for a running scheduler flush; if it is stuck, go ahead anyway:
        # the ledger keeps two flushers exact, the lock only saves work.
        report = flush_with_lock(
            redis, pool, config, wait_seconds=config.flush_lock_seconds, failpoint=failpoint
        )
        if report is None:
            report = flush_once(redis, pool, config, failpoint=failpoint)
        isolated = quarantine_rows.count_unresolved(pool)
    except RedisError as exc:
        fail(f"Redis: {one_line(exc)}")
    except psycopg2.Error as exc:
        fail(f"PostgreSQL: {one_line(exc)}")
    click.echo(_summary(report))
    if isolated:
        fail(
            f"{isolated} isolated row(s) wait for an operator: see payload-stats quarantine",
            QUARANTINED,
        )


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
            f"payloads={w.written.payloads} watch_ms={w.written.watch_ms} "
            f"lag={w.lag_seconds:.1f}s"
            + (f" isolated={w.written.quarantined}" if w.written.quarantined else "")
        )
    return "\n".join(lines)


@cli.command("scheduler")
def scheduler_command() -> None:
    """Run the flush scheduler (one per deployment is enough; more are safe)."""
    os.environ.setdefault("STATS_LOG_FORMAT", "json")
    config = load_config()
    require(config, "REDIS_URL", "DATABASE_URL")
    redis, pool = redis_client(config), flush_pool(config, 2)
    start_checks(config, redis, pool, migrate_schema=True, tolerate_down=True)
    scheduler.run(redis, pool, config, failpoints.from_config(config.failpoint))


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

    config = load_config()
    require(config, "REDIS_URL")
    redis = redis_client(config)
    start_checks(config, redis, None)
    try:
        terminal.run(redis, config, once=once, limit=limit, customer=customer, content=content)
    except RedisError as exc:
        fail(f"Redis: {one_line(exc)}")


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
    config = load_config()
    require(config, "REDIS_URL")
    if bind:
        try:
            check_bind(bind)
        except ValidationError as exc:
            fail(f"--bind: {' '.join(exc.messages)}", REFUSED)
    pool = database_pool(config, 1) if config.database_url else None
    start_checks(config, redis_client(config), pool, tolerate_down=True)
    argv = _gunicorn_argv(bind, workers)
    os.environ.setdefault("STATS_LOG_FORMAT", "json")  # one object per line under gunicorn
    os.execv(argv[0], argv)


@cli.command()
@click.option("--bind", metavar="HOST:PORT", help="Listen address [STATS_BIND, 127.0.0.1:8000].")
@click.option("--workers", type=click.IntRange(1), help="Gunicorn workers [STATS_WEB_WORKERS].")
@click.option(
    "--window",
    type=click.IntRange(1, 86400),
    metavar="SECONDS",
    help="Window length [STATS_WINDOW_SECONDS, 300], with a grace and flush interval to "
    "match (10: rows every 10 s). Recorded like the setting (docs/deployment.md).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Also run simulated devices (payload-stats demo), with 10-second windows unless "
    "--window, on embedded servers of its own under STATS_DATA_DIR/demo.",
)
def serve(bind: str | None, workers: int | None, window: int | None, demo: bool) -> None:
    """Run the HTTP service and the flush scheduler until SIGTERM/SIGINT.

    With REDIS_URL or DATABASE_URL unset, starts embedded servers for them
    under STATS_DATA_DIR (pip install 'payload-stats[embedded]').
    """
    from . import serve as serving_command

    serving_command.run(bind=bind, workers=workers, window=window, demo=demo)


def main() -> None:
    from . import dotenv_file

    try:
        dotenv_file.load()
    except dotenv_file.EnvFileError as exc:
        fail(str(exc), REFUSED)
    cli(prog_name="payload-stats")

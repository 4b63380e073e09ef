"""The ``payload-stats`` command."""

from __future__ import annotations

import os
import sys

import click
import psycopg2
from marshmallow import ValidationError
from redis.exceptions import RedisError

from .. import deployment, logs
from ..buffer.connection import redis_client
from ..config import Config, ConfigError, check_bind
from ..flush import failpoints, scheduler
from ..flush.flusher import FlushReport, flush_once
from ..flush.lock import flush_with_lock
from ..logs import one_line
from ..postgres import quarantine as quarantine_rows
from ..postgres.migrations import migrate
from ..postgres.pool import database_pool, flush_pool
from . import embedded, startup
from .demo import demo_command

# Exit codes: 1 a server cannot be reached, 2 refused as configured, 3 rows
# isolated by the flush wait for an operator (payload-stats quarantine).
UNREACHABLE, REFUSED, QUARANTINED = 1, 2, 3


def _fail(message: str, code: int = UNREACHABLE) -> None:
    click.echo(f"payload-stats: error: {message}", err=True)
    sys.exit(code)


def _start(
    config: Config, redis, pool, *, migrate_schema: bool = False, tolerate_down: bool = False
) -> None:
    """The start checks (ops.startup): refusals exit 2; a server down exits 1,
    or, for long-running processes (``tolerate_down``), is left to their retries."""
    try:
        startup.check(config, redis, pool, migrate_schema=migrate_schema)
    except startup.Refused as exc:
        _fail(str(exc), REFUSED)
    except RedisError as exc:
        if not tolerate_down:
            _fail(f"Redis: {one_line(exc)}")
        click.echo(f"payload-stats: warning: Redis: {one_line(exc)}", err=True)
    except psycopg2.Error as exc:
        if not tolerate_down:
            _fail(f"PostgreSQL: {one_line(exc)}")
        click.echo(f"payload-stats: warning: PostgreSQL: {one_line(exc)}", err=True)


def _config(*, attach: bool = True) -> Config:
    """The configuration; unset URLs are taken from a running embedded ``serve``."""
    try:
        config = Config.from_env()
        logs.configure(config)
        return embedded.attach(config) if attach else config
    except ConfigError as exc:
        _fail(str(exc), 2)


def _require(config: Config, *names: str) -> None:
    """Exit 1 (nothing to talk to) unless every URL in ``names`` is known."""
    for name in names:
        if not getattr(config, name.lower()):
            _fail(
                f"no {name} and no running serve in {config.data_dir}/: start "
                f"payload-stats serve (it starts embedded servers), or set {name} "
                "(environment or .env)",
                UNREACHABLE,
            )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="payload-stats")
def cli() -> None:
    """Video-player telemetry into billing-grade traffic statistics."""


cli.add_command(demo_command)


@cli.command("init-db")
def init_db() -> None:
    """Create or migrate the PostgreSQL schema (idempotent)."""
    config = _config()
    _require(config, "DATABASE_URL")
    pool = database_pool(config, 1)
    try:
        applied = migrate(pool)
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    _start(config, redis_client(config) if config.redis_url else None, pool)
    click.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@cli.command()
def flush() -> None:
    """Flush every closed window now, print what was written, exit.

    Exits 1 when Redis or PostgreSQL cannot be reached (nothing is lost then),
    2 when refused as configured, 3 when isolated rows wait for an operator.
    """
    config = _config()
    _require(config, "REDIS_URL", "DATABASE_URL")
    failpoint = failpoints.from_config(config.failpoint)
    redis = redis_client(config)
    pool = flush_pool(config, 1)
    _start(config, redis, pool, migrate_schema=True)
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
        _fail(f"Redis: {one_line(exc)}")
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    click.echo(_summary(report))
    if isolated:
        _fail(
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
    config = _config()
    _require(config, "REDIS_URL", "DATABASE_URL")
    redis, pool = redis_client(config), flush_pool(config, 2)
    _start(config, redis, pool, migrate_schema=True, tolerate_down=True)
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

    config = _config()
    _require(config, "REDIS_URL")
    redis = redis_client(config)
    _start(config, redis, None)
    try:
        terminal.run(redis, config, once=once, limit=limit, customer=customer, content=content)
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
            _fail(f"--bind: {' '.join(exc.messages)}", REFUSED)
    pool = database_pool(config, 1) if config.database_url else None
    _start(config, redis_client(config), pool, tolerate_down=True)
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


@cli.group(invoke_without_command=True)
@click.pass_context
def quarantine(ctx: click.Context) -> None:
    """List the rows the flush isolated (a sum past bigint, an unreadable key).

    Nothing isolated is lost: each row waits here, exactly, until it is merged
    into stats or discarded (docs/exactly-once.md, "Isolated rows").
    """
    if ctx.invoked_subcommand is not None:
        return
    config = _config()
    _require(config, "DATABASE_URL")
    try:
        rows = quarantine_rows.unresolved(database_pool(config, 1))
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    if not rows:
        click.echo("no isolated rows")
        return
    for r in rows:
        name = "(unreadable key)" if r.customer is None else f"{r.customer}/{r.content}"
        click.echo(
            f"{r.id}  {r.time.strftime('%Y-%m-%dT%H:%M:%SZ')}  {name}  cdn={r.cdn} "
            f"p2p={r.p2p} sessions={r.sessions} payloads={r.payloads} "
            f"watch_ms={r.watch_ms}  {r.reason}"
        )


@quarantine.command("merge")
@click.argument("row_id", type=int)
def quarantine_merge(row_id: int) -> None:
    """Add isolated row ROW_ID into stats now that its row has room."""
    _resolve(lambda pool: quarantine_rows.merge(pool, row_id), f"row {row_id} merged")


@quarantine.command("discard")
@click.argument("row_id", type=int)
@click.option("--reason", required=True, help="Why it is not billed (kept with the row).")
def quarantine_discard(row_id: int, reason: str) -> None:
    """Mark isolated row ROW_ID resolved without adding it (it stays on record)."""
    _resolve(lambda pool: quarantine_rows.discard(pool, row_id, reason), f"row {row_id} discarded")


def _resolve(action, done: str) -> None:
    config = _config()
    _require(config, "DATABASE_URL")
    try:
        action(database_pool(config, 1))
    except quarantine_rows.QuarantineError as exc:
        _fail(str(exc), REFUSED)
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    click.echo(done)


@cli.command()
@click.option(
    "--rerecord", is_flag=True,
    help="Record this environment's settings in place of the recorded ones (after a drain).",
)  # fmt: skip
def settings(rerecord: bool) -> None:
    """Show the deployment's recorded settings beside this environment's.

    Window length, shard count and key prefix are recorded when a deployment
    first starts; every process refuses to run with others. To change one:
    stop the web processes, let the last window close, run payload-stats
    flush, then run this with --rerecord and the new settings
    (docs/deployment.md, "Changing a recorded setting"). On Redis Cluster it
    also shows which master serves which shards.
    """
    config = _config()
    _require(config, "DATABASE_URL")
    pool = database_pool(config, 1)
    try:
        migrate(pool)
        if rerecord:
            _require(config, "REDIS_URL")
            old = deployment.rerecord(redis_client(config), pool, config)
            click.echo(f"recorded (was {old})" if old else "recorded")
            return
        found = deployment.recorded(pool)
    except deployment.DeploymentError as exc:
        _fail(str(exc), REFUSED)
    except RedisError as exc:
        _fail(f"Redis: {one_line(exc)}")
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    for attr, variable in deployment.RECORDED:
        mine = getattr(config, attr)
        theirs = "(nothing recorded yet)" if found is None else getattr(found, attr)
        mark = "" if found is None or theirs == mine else "   <- differs"
        click.echo(f"{variable}: here {mine}, recorded {theirs}{mark}")
    if config.redis_cluster and config.redis_url:
        try:
            placed = deployment.shards_per_master(redis_client(config), config)
        except RedisError as exc:
            _fail(f"Redis: {one_line(exc)}")
        fair = config.shards / len(placed)
        click.echo(
            f"shards per master (each takes its shards' share of the ingest; "
            f"even would be {fair:.1f}):"
        )
        for name, shards in placed.items():
            click.echo(f"  {name}  {len(shards)}  ({', '.join(map(str, shards))})")


def main() -> None:
    from . import dotenv_file

    try:
        dotenv_file.load()
    except dotenv_file.EnvFileError as exc:
        _fail(str(exc), REFUSED)
    cli(prog_name="payload-stats")

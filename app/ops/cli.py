"""The ``payload-stats`` command."""

from __future__ import annotations

import os
import sys
import time

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
from ..postgres import rollups
from ..postgres.migrations import migrate
from ..postgres.pool import database_pool, flush_pool
from ..query import export as query_export
from ..query import history_params
from . import embedded, importer, startup
from .demo import demo_command

# Exit codes: 1 a server cannot be reached, 2 refused as configured, 3 rows
# isolated by the flush wait for an operator (payload-stats quarantine), 4 an
# import file rejected (nothing written).
UNREACHABLE, REFUSED, QUARANTINED, REJECTED = 1, 2, 3, 4


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


def _instant(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    try:
        return history_params.parse_time(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time, e.g. 2026-11-26T10:00:00Z"
        ) from None


@cli.command("import")
@click.argument("file", type=click.File("rb"))
def import_command(file) -> None:
    """Import history from a CSV FILE ('-': standard input) into stats and its rollups.

    Header: time,customer,content,cdn,p2p,sessions,payloads[,watch_ms]. Times
    are window ends in UTC (2026-11-26T10:05:00Z). Every line is checked
    first: one bad line rejects the file (exit 4) and nothing is written.
    Importing the same file again adds nothing; an interrupted import adds the
    rest when run again. Exits 1 when PostgreSQL cannot be reached, 3 when
    rows had to be isolated (payload-stats quarantine).
    """
    config = _config()
    _require(config, "DATABASE_URL")
    pool = database_pool(config, 1)
    _start(config, None, pool, migrate_schema=True)
    progress = _progress() if sys.stderr.isatty() else None
    try:
        report = importer.import_file(pool, config, file, progress=progress)
    except importer.Rejected as exc:
        if progress:
            click.echo("", err=True)
        for number, message in exc.errors:
            click.echo(f"line {number}: {message}", err=True)
        if exc.bad_lines > len(exc.errors):
            click.echo(f"... and {exc.bad_lines - len(exc.errors)} more bad line(s)", err=True)
        _fail(str(exc), REJECTED)
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)} (run it again: nothing is imported twice)")
    if progress:
        click.echo("", err=True)
    if report.already:
        click.echo(f"already imported (sha256 {report.sha256}): nothing added")
    else:
        rate = report.written_rows / report.seconds if report.seconds else 0
        click.echo(
            f"imported {report.written_rows} row(s) in {report.written_chunks} chunk(s) "
            f"in {report.seconds:.1f}s ({rate:,.0f} rows/s; sha256 {report.sha256})"
            + (
                f"; {report.rows - report.written_rows} row(s) were imported before"
                if report.written_rows < report.rows
                else ""
            )
        )
    if report.isolated:
        _fail(
            f"{report.isolated} row(s) would pass bigint and were isolated: "
            "see payload-stats quarantine",
            QUARANTINED,
        )


def _progress():
    started = time.monotonic()

    def show(phase: str, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        if total:
            text = f"{phase} {done:,} of {total:,} rows ({100 * done / total:.0f}%)"
        else:
            text = f"{phase} {done:,} lines"
        click.echo(f"\r{text}, {elapsed:.0f}s   ", err=True, nl=False)

    return show


@cli.command()
@click.option("--from", "start", callback=_instant, help="Window ends at or after this time.")
@click.option("--to", "end", callback=_instant, help="Window ends before this time.")
@click.option("--bucket", type=click.Choice(history_params.BUCKETS), help="UTC buckets.")
@click.option(
    "--group-by", type=click.Choice(tuple(history_params.GROUPS)), help="Sum over the other name."
)
@click.option("--customer", help="Only this customer.")
@click.option("--content", help="Only this content.")
@click.option("--order", type=click.Choice(("asc", "desc")), default="asc", show_default=True)
def export(start, end, bucket, group_by, customer, content, order) -> None:
    """Write history as CSV on standard output, as GET /stats?format=csv does.

    Example, one line per customer and calendar month (UTC), for billing:
    payload-stats export --from 2026-01-01 --to 2027-01-01 --bucket 1mo --group-by customer
    """
    config = _config()
    _require(config, "DATABASE_URL")
    if start and end and start > end:
        _fail("--from must not be later than --to", REFUSED)
    query = history_params.Query(
        customer=customer,
        content=content,
        start=start,
        end=end,
        descending=order == "desc",
        group_by=group_by,
        bucket=bucket,
        format="csv",
    )
    pool = database_pool(config, 1)
    out = click.get_text_stream("stdout")
    try:
        for chunk in query_export.csv_stream(pool, query, config.window_seconds):
            out.write(chunk)
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    out.flush()


@cli.command()
@click.option("--from", "start", callback=_instant, required=True, help="Start (UTC day).")
@click.option("--to", "end", callback=_instant, required=True, help="End (exclusive).")
def verify(start, end) -> None:
    """Compare the hourly and daily rollups with the stats rows over the UTC
    days from --from to --to; print every difference. Exits 0 when they are
    equal, 1 on a difference (or when PostgreSQL cannot be reached)."""
    config = _config()
    _require(config, "DATABASE_URL")
    if start > end:
        _fail("--from must not be later than --to", REFUSED)
    pool = database_pool(config, 1)
    tty = sys.stderr.isatty()

    def on_day(day, diffs) -> None:
        for d in diffs:
            click.echo(d.describe())
        if tty:
            click.echo(f"\rchecked {day:%Y-%m-%d}", err=True, nl=False)

    try:
        found = rollups.verify(pool, start, end, on_day)
    except psycopg2.Error as exc:
        _fail(f"PostgreSQL: {one_line(exc)}")
    if tty:
        click.echo("", err=True)
    days = list(rollups.days(start, end)) if end > start else []
    span = f"{len(days)} UTC day(s)" + (f" from {days[0]} to {days[-1]}" if days else "")
    if found:
        click.echo(f"{len(found)} difference(s) between the rollups and the stats rows, {span}")
        sys.exit(1)
    click.echo(f"the rollups equal the stats rows: {span}")


def main() -> None:
    from . import dotenv_file

    try:
        dotenv_file.load()
    except dotenv_file.EnvFileError as exc:
        _fail(str(exc), REFUSED)
    cli(prog_name="payload-stats")

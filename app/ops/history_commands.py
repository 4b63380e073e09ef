"""History commands: ``import`` (CSV into stats and its rollups), ``export``
(history as CSV) and ``verify`` (rollups against the stats rows)."""

from __future__ import annotations

import sys
import time

import click
import psycopg2

from ..logs import one_line
from ..postgres import rollups
from ..postgres.pool import database_pool
from ..query import export as query_export
from ..query import history_params
from . import importer
from .cli_support import QUARANTINED, REFUSED, REJECTED, fail, load_config, require, start_checks


def _instant(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    try:
        return history_params.parse_time(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time, e.g. 2026-11-26T10:00:00Z"
        ) from None


@click.command("import")
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
    config = load_config()
    require(config, "DATABASE_URL")
    pool = database_pool(config, 1)
    start_checks(config, None, pool, migrate_schema=True)
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
        fail(str(exc), REJECTED)
    except psycopg2.Error as exc:
        fail(f"PostgreSQL: {one_line(exc)} (run it again: nothing is imported twice)")
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
        fail(
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


@click.command()
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
    config = load_config()
    require(config, "DATABASE_URL")
    if start and end and start > end:
        fail("--from must not be later than --to", REFUSED)
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
        fail(f"PostgreSQL: {one_line(exc)}")
    out.flush()


@click.command()
@click.option("--from", "start", callback=_instant, required=True, help="Start (UTC day).")
@click.option("--to", "end", callback=_instant, required=True, help="End (exclusive).")
def verify(start, end) -> None:
    """Compare the hourly and daily rollups with the stats rows over the UTC
    days from --from to --to; print every difference. Exits 0 when they are
    equal, 1 on a difference (or when PostgreSQL cannot be reached)."""
    config = load_config()
    require(config, "DATABASE_URL")
    if start > end:
        fail("--from must not be later than --to", REFUSED)
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
        fail(f"PostgreSQL: {one_line(exc)}")
    if tty:
        click.echo("", err=True)
    days = list(rollups.days(start, end)) if end > start else []
    span = f"{len(days)} UTC day(s)" + (f" from {days[0]} to {days[-1]}" if days else "")
    if found:
        click.echo(f"{len(found)} difference(s) between the rollups and the stats rows, {span}")
        sys.exit(1)
    click.echo(f"the rollups equal the stats rows: {span}")

"""Operator commands: the isolated rows (``quarantine``) and the recorded settings
(``settings``)."""

from __future__ import annotations

import click
import psycopg2
from redis.exceptions import RedisError

from .. import deployment
from ..buffer.connection import redis_client
from ..logs import one_line
from ..postgres import quarantine as quarantine_rows
from ..postgres.migrations import migrate
from ..postgres.pool import database_pool
from .cli_support import REFUSED, fail, load_config, require


@click.group(invoke_without_command=True)
@click.pass_context
def quarantine(ctx: click.Context) -> None:
    """List the rows the flush isolated (a sum past bigint, an unreadable key).

    Nothing isolated is lost: each row waits here, exactly, until it is merged
    into stats or discarded (docs/exactly-once.md, "Isolated rows").
    """
    if ctx.invoked_subcommand is not None:
        return
    config = load_config()
    require(config, "DATABASE_URL")
    try:
        rows = quarantine_rows.unresolved(database_pool(config, 1))
    except psycopg2.Error as exc:
        fail(f"PostgreSQL: {one_line(exc)}")
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
    config = load_config()
    require(config, "DATABASE_URL")
    try:
        action(database_pool(config, 1))
    except quarantine_rows.QuarantineError as exc:
        fail(str(exc), REFUSED)
    except psycopg2.Error as exc:
        fail(f"PostgreSQL: {one_line(exc)}")
    click.echo(done)


@click.command()
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
    config = load_config()
    require(config, "DATABASE_URL")
    pool = database_pool(config, 1)
    try:
        migrate(pool)
        if rerecord:
            require(config, "REDIS_URL")
            old = deployment.rerecord(redis_client(config), pool, config)
            click.echo(f"recorded (was {old})" if old else "recorded")
            return
        found = deployment.recorded(pool)
    except deployment.DeploymentError as exc:
        fail(str(exc), REFUSED)
    except RedisError as exc:
        fail(f"Redis: {one_line(exc)}")
    except psycopg2.Error as exc:
        fail(f"PostgreSQL: {one_line(exc)}")
    for attr, variable in deployment.RECORDED:
        mine = getattr(config, attr)
        theirs = "(nothing recorded yet)" if found is None else getattr(found, attr)
        mark = "" if found is None or theirs == mine else "   <- differs"
        click.echo(f"{variable}: here {mine}, recorded {theirs}{mark}")
    if config.redis_cluster and config.redis_url:
        try:
            placed = deployment.shards_per_master(redis_client(config), config)
        except RedisError as exc:
            fail(f"Redis: {one_line(exc)}")
        fair = config.shards / len(placed)
        click.echo(
            f"shards per master (each takes its shards' share of the ingest; "
            f"even would be {fair:.1f}):"
        )
        for name, shards in placed.items():
            click.echo(f"  {name}  {len(shards)}  ({', '.join(map(str, shards))})")

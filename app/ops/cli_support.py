"""What every command of the ``payload-stats`` CLI shares: exit codes, the
configuration, and the checks a process makes before it runs."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
import psycopg2
from redis.exceptions import RedisError

from .. import logs
from ..config import Config, ConfigError
from ..logs import one_line
from . import embedded, startup

# Exit codes: 1 a server cannot be reached, 2 refused as configured, 3 rows
# isolated by the flush wait for an operator (payload-stats quarantine), 4 an
# import file rejected (nothing written).
UNREACHABLE, REFUSED, QUARANTINED, REJECTED = 1, 2, 3, 4


def fail(message: str, code: int = UNREACHABLE) -> NoReturn:
    click.echo(f"payload-stats: error: {message}", err=True)
    sys.exit(code)


def start_checks(
    config: Config, redis, pool, *, migrate_schema: bool = False, tolerate_down: bool = False
) -> None:
    """The start checks (ops.startup): refusals exit 2; a server down exits 1,
    or, for long-running processes (``tolerate_down``), is left to their retries."""
    try:
        startup.check(config, redis, pool, migrate_schema=migrate_schema)
    except startup.Refused as exc:
        fail(str(exc), REFUSED)
    except RedisError as exc:
        if not tolerate_down:
            fail(f"Redis: {one_line(exc)}")
        click.echo(f"payload-stats: warning: Redis: {one_line(exc)}", err=True)
    except psycopg2.Error as exc:
        if not tolerate_down:
            fail(f"PostgreSQL: {one_line(exc)}")
        click.echo(f"payload-stats: warning: PostgreSQL: {one_line(exc)}", err=True)


def load_config(*, attach: bool = True) -> Config:
    """The configuration; unset URLs are taken from a running embedded ``serve``."""
    try:
        config = Config.from_env()
        logs.configure(config)
        return embedded.attach(config) if attach else config
    except ConfigError as exc:
        fail(str(exc), 2)


def require(config: Config, *names: str) -> None:
    """Exit 1 (nothing to talk to) unless every URL in ``names`` is known."""
    for name in names:
        if not getattr(config, name.lower()):
            fail(
                f"no {name} and no running serve in {config.data_dir}/: start "
                f"payload-stats serve (it starts embedded servers), or set {name} "
                "(environment or .env)",
                UNREACHABLE,
            )

"""The migrations runner: versioned ``sql/migrations/NNNN_name.sql`` files, applied once."""

from __future__ import annotations

import logging
import re
from importlib import resources

from psycopg2.pool import ThreadedConnectionPool

from .pool import connection
from .statements import sql

logger = logging.getLogger(__name__)

# Any 64-bit constant that no other application is likely to pick.
MIGRATION_LOCK_ID = 0x5041594C4F4144  # "PAYLOAD"


def migrations() -> list[tuple[int, str, str]]:
    """The versioned migrations shipped with the package: (version, name, sql)."""
    found = []
    for entry in resources.files(__package__).joinpath("sql", "migrations").iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found)


def migrate(pool: ThreadedConnectionPool) -> list[str]:
    """Apply every migration not applied yet; idempotent and safe to run concurrently.

    Returns the names of the migrations applied now. Raises psycopg2.Error.
    """
    applied_now = []
    with connection(pool) as conn:
        with conn, conn.cursor() as cur:
            # A migration may rebuild a large table: no timeout of the pool applies.
            cur.execute("SET LOCAL statement_timeout = 0")
            cur.execute("SET LOCAL lock_timeout = 0")
            # Serialises concurrent starts (web, scheduler, init-db) on one database.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            cur.execute(sql("create_migrations_table"))
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
            for version, name, text in migrations():
                if version in done:
                    continue
                cur.execute(text)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied_now.append(f"{version:04d}_{name}")
    for name in applied_now:
        logger.info("migration_applied", extra={"migration": name})
    return applied_now

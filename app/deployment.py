"""The settings a deployment records once: window length, shard count, key prefix.

They fix the Redis key layout and the time of every row, so two processes
that disagree on them write garbage (a window of 60 s flushed as one of
300 s, keys no flusher reads). The first process with a database records
them in PostgreSQL (the ``deployment`` table) and in Redis (beside the keys,
under the key prefix); every process compares its own settings with the
record at start and refuses to run on a difference, naming the setting and
both values. The schema version is checked the same way against the
migrations this code ships. Changing a setting is a deliberate operation:
drain, then ``payload-stats settings --rerecord`` (docs/deployment.md,
"Recorded settings").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from psycopg2.pool import ThreadedConnectionPool
from redis import Redis
from redis.exceptions import ResponseError

from .buffer.keys import Keys
from .buffer.memory import is_out_of_memory
from .buffer.snapshots import buffered_windows
from .config import Config
from .postgres.migrations import migrations
from .postgres.pool import connection
from .postgres.statements import sql

# (Config attribute, environment variable) of each recorded setting.
RECORDED = (
    ("window_seconds", "STATS_WINDOW_SECONDS"),
    ("shards", "STATS_SHARDS"),
    ("key_prefix", "STATS_KEY_PREFIX"),
)


class DeploymentError(RuntimeError):
    """This process may not run against this deployment; the message says why."""


class SettingsMismatch(DeploymentError):
    def __init__(self, variable: str, configured: object, recorded: object) -> None:
        super().__init__(
            f"{variable} is {configured} here but this deployment recorded {recorded}; "
            f"set {variable}={recorded}, or drain and re-record (docs/deployment.md)"
        )


@dataclass(frozen=True)
class Settings:
    window_seconds: int
    shards: int
    key_prefix: str

    @classmethod
    def of(cls, config: Config) -> Settings:
        return cls(config.window_seconds, config.shards, config.key_prefix)


def check(redis: Redis | None, pool: ThreadedConnectionPool | None, config: Config) -> None:
    """Record the settings where nothing is recorded yet, else compare them.

    PostgreSQL's record is the reference when there is a database; Redis's
    record (per key prefix) serves the processes that have none. Raises
    DeploymentError on a difference, psycopg2.Error or RedisError when a
    server fails.
    """
    mine = Settings.of(config)
    if pool is not None:
        recorded = _postgres_record(pool, mine)
        _compare(mine, recorded)
        check_schema(pool)
    if redis is not None:
        _compare(mine, _redis_record(redis, mine))


def check_schema(pool: ThreadedConnectionPool) -> None:
    """Refuse a database migrated by a newer release, or not migrated yet."""
    shipped = max(version for version, _, _ in migrations())
    with connection(pool) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
                applied = cur.fetchone()[0]
        finally:
            conn.rollback()
    if applied > shipped:
        raise DeploymentError(
            f"the database schema is version {applied}, newer than this release's "
            f"{shipped}: upgrade payload-stats"
        )
    if applied < shipped:
        raise DeploymentError(
            f"the database schema is version {applied}, this release needs {shipped}: "
            "run payload-stats init-db"
        )


def recorded(pool: ThreadedConnectionPool) -> Settings | None:
    """The settings recorded in PostgreSQL, or None. Raises psycopg2.Error."""
    with connection(pool) as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(sql("deployment_read"))
                row = cur.fetchone()
        finally:
            conn.rollback()
    return Settings(*row) if row else None


def rerecord(redis: Redis, pool: ThreadedConnectionPool, config: Config) -> Settings | None:
    """Record ``config``'s settings in place of the recorded ones; returns the old.

    Refuses (DeploymentError) while Redis holds buffered data under the old
    settings: it would be stranded. Raises psycopg2.Error or RedisError.
    """
    old = recorded(pool)
    if old is not None:
        before = replace(
            config, window_seconds=old.window_seconds, shards=old.shards,
            key_prefix=old.key_prefix,
        )  # fmt: skip
        pending = buffered_windows(redis, before)
        if pending:
            raise DeploymentError(
                f"Redis still holds {len(pending)} window(s) buffered under the recorded "
                "settings: stop the web processes, wait for the last window to close, run "
                "payload-stats flush with the recorded settings, then re-record"
            )
        redis.delete(Keys(old.key_prefix).deployment())
    mine = Settings.of(config)
    with connection(pool) as conn, conn, conn.cursor() as cur:
        cur.execute(sql("deployment_rerecord"), vars(mine))
    redis.delete(Keys(mine.key_prefix).deployment())
    _redis_record(redis, mine)
    return old


def shards_per_master(redis: Redis, config: Config) -> dict[str, list[int]]:
    """On Redis Cluster: {master "host:port": the shards whose slot it serves}.

    Each shard is one slot (its hash tag); the slots of shards 0..N-1 are fixed
    by the tag, so how evenly they fall on the masters depends on N and on the
    masters' slot ranges (docs/capacity.md, "Shards on a cluster"). Raises
    RedisError.
    """
    keys = Keys(config.key_prefix)
    placed: dict[str, list[int]] = {}
    for shard in range(config.shards):
        node = redis.get_node_from_key(keys.windows(shard))
        placed.setdefault(node.name, []).append(shard)
    return dict(sorted(placed.items()))


def _postgres_record(pool: ThreadedConnectionPool, mine: Settings) -> Settings:
    with connection(pool) as conn, conn, conn.cursor() as cur:
        cur.execute(sql("deployment_record"), vars(mine))
        cur.execute(sql("deployment_read"))
        return Settings(*cur.fetchone())


def _redis_record(redis: Redis, mine: Settings) -> Settings:
    key = Keys(mine.key_prefix).deployment()
    try:
        pipe = redis.pipeline(transaction=True)
        pipe.hsetnx(key, "window_seconds", mine.window_seconds)
        pipe.hsetnx(key, "shards", mine.shards)
        pipe.hgetall(key)
        found = pipe.execute()[-1]
    except ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        found = redis.hgetall(key)  # a full Redis can still be read
        if not found:
            return mine
    return Settings(int(found[b"window_seconds"]), int(found[b"shards"]), mine.key_prefix)


def _compare(mine: Settings, recorded: Settings) -> None:
    for attr, variable in RECORDED:
        if getattr(mine, attr) != getattr(recorded, attr):
            raise SettingsMismatch(variable, getattr(mine, attr), getattr(recorded, attr))

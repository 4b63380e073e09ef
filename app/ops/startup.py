"""What every process checks before it runs: Redis keeps every key (and is a
cluster exactly when STATS_REDIS_CLUSTER says so), the schema is current, and
its settings are the deployment's (docs/deployment.md).

Each function raises :class:`Refused` with one line for the operator; the CLI
prints it and exits 2. A server that cannot be reached raises its own error
(``RedisError``, ``psycopg2.Error``), which long-running processes may
tolerate at start (they retry) and one-shot commands report.
"""

from __future__ import annotations

from psycopg2.pool import ThreadedConnectionPool
from redis import Redis

from .. import deployment
from ..buffer.connection import NotACluster
from ..buffer.memory import EvictionPolicyError, check_eviction_policy
from ..config import Config
from ..postgres.migrations import migrate


class Refused(RuntimeError):
    """This process must not run as configured; the message is one line."""


def check(
    config: Config,
    redis: Redis | None,
    pool: ThreadedConnectionPool | None,
    *,
    migrate_schema: bool = False,
) -> None:
    """Eviction policy, then (optionally) migrations, then the recorded settings.

    Raises Refused, or the server's own error when one cannot be reached.
    """
    if redis is not None:
        try:
            check_eviction_policy(redis)
        except EvictionPolicyError as exc:
            raise Refused(str(exc)) from None
        except NotACluster as exc:
            raise Refused(str(exc)) from None
        if not config.redis_cluster and redis.info("cluster").get("cluster_enabled"):
            # A single-Redis client on a cluster node would refuse every shard
            # whose slot lives elsewhere.
            raise Refused("REDIS_URL names a node of a Redis Cluster: set STATS_REDIS_CLUSTER=1")
    if pool is not None and migrate_schema:
        migrate(pool)
    try:
        deployment.check(redis, pool, config)
    except deployment.DeploymentError as exc:
        raise Refused(str(exc)) from None

"""The Redis client, built from the configuration: the one place clients are made.

Called after fork (in each gunicorn worker, in the scheduler process), never
at import time. With ``STATS_REDIS_CLUSTER=1`` the client is redis-py's
``RedisCluster``, reached through ``REDIS_URL`` (any node): it follows MOVED
and ASK redirections and a failover by itself, with a bounded number of
retries, and every key of one shard lives in one slot (the ``{shard}`` hash
tag), so each script call runs on one node.
"""

from __future__ import annotations

import threading
from typing import Any

import hiredis
from redis import Redis, RedisCluster
from redis._parsers import Encoder
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import Script
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, RedisClusterException, RedisError
from redis.retry import Retry

from ..config import Config, ConfigError

# Retries of a command on a cluster after a connection error, a timeout, a
# CLUSTERDOWN or a slot whose node is unknown, each after refreshing the slot
# map. A dead master on a reachable host refuses at once, so a request whose
# shard is on it answers 503 within milliseconds; a host that does not answer
# costs (1 + retries) x STATS_REDIS_TIMEOUT_SECONDS at most.
CLUSTER_RETRIES = 3


class CommandPacker(HiredisRespSerializer):
    """redis-py's hiredis command packer, minus a pass over every argument.

    redis-py copies each argument looking for a bytearray or memoryview
    before handing the tuple to hiredis; on an INGEST call of a batch that
    pass cost about as much as the packing itself (1.5 against 0.8 us per
    payload). A command whose first word is one argument goes straight to
    hiredis; anything hiredis refuses (a bytearray) and multi-word command
    names ("SCRIPT LOAD") take redis-py's own path, errors included.
    """

    def pack(self, *args: Any) -> list[bytes]:
        head = args[0]
        if type(head) is str and " " not in head:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack(*args)


def redis_client(config: Config) -> Redis:
    """A Redis client with bounded timeouts, so no request hangs on a dead server.

    A :class:`ClusterClient` when ``config.redis_cluster``: it connects on
    first use, so building it never touches the network (a cluster down at
    start answers 503, like a single Redis down). Raises ConfigError when
    REDIS_URL is not set.
    """
    if not config.redis_url:
        raise ConfigError("REDIS_URL is not set")
    if config.redis_cluster:
        return ClusterClient(config)  # type: ignore[return-value]
    return Redis.from_url(
        config.redis_url,
        socket_timeout=config.redis_timeout_seconds,
        socket_connect_timeout=config.redis_timeout_seconds,
        health_check_interval=30,
        command_packer=CommandPacker(),
    )


def is_cluster(redis: Any) -> bool:
    """Whether ``redis`` speaks to a Redis Cluster."""
    return isinstance(redis, (ClusterClient, RedisCluster))


def primaries_info(redis: Any, section: str) -> list[dict[str, Any]]:
    """``INFO section`` of every master of the cluster that answers.

    A master that does not answer is left out: the others' shards are still
    served, so a process stays ready (its requests to that master's shards
    answer 503). Raises RedisError only when no master answers.
    """
    found, failed = [], None
    for node in redis.get_primaries():
        try:
            found.append(redis.info(section, target_nodes=node))
        except RedisError as exc:
            failed = exc
    if not found:
        raise failed or ClusterUnavailable("Redis Cluster: no master known")
    return found


class ClusterUnavailable(ConnectionError):
    """The cluster, or the node of a slot, cannot serve a command.

    redis-py raises ``RedisClusterException`` (not a ``RedisError``) when no
    node answers or a slot has no known node; the client turns it into this
    ``RedisError``, which every caller already handles as "Redis is down".
    """


class NotACluster(ClusterUnavailable):
    """STATS_REDIS_CLUSTER=1, but the node of REDIS_URL is not in cluster mode."""


def _unavailable(exc: RedisClusterException) -> ClusterUnavailable:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "Cluster mode is not enabled" in text:
        return NotACluster(
            "REDIS_URL names a Redis that is not in cluster mode: unset STATS_REDIS_CLUSTER "
            "(or name a node of the cluster)"
        )
    return ClusterUnavailable(f"Redis Cluster: {text}")


class _Pipeline:
    """A ``ClusterPipeline`` whose failures are ``RedisError``s.

    ``redirected`` tells whether any command had to be sent again on its own
    (after MOVED, ASK or a connection error): it then ran on another
    connection than the rest of its node's commands.
    """

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.redirected = False
        again = pipe.parent_execute_command

        def resend(*args: Any, **options: Any) -> Any:
            self.redirected = True
            try:
                return again(*args, **options)
            except RedisClusterException as exc:
                raise _unavailable(exc) from exc

        pipe.parent_execute_command = resend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __len__(self) -> int:
        return len(self._pipe)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return self._pipe.execute(raise_on_error)
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc


class _Cluster(RedisCluster):
    """``RedisCluster`` raising ``RedisError`` for every failure."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc

    def get_node_from_key(self, key: Any, replica: bool = False) -> Any:
        try:
            return super().get_node_from_key(key, replica)
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        try:
            return _Pipeline(super().pipeline(transaction, shard_hint))
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc


class ClusterClient:
    """A ``RedisCluster`` built on first use, and rebuilt until one is built.

    Everything else is the cluster client's own (attribute access is passed
    on). Thread-safe, like the client it holds.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._client: _Cluster | None = None

    @property
    def cluster(self) -> _Cluster:
        """The connected client. Raises ClusterUnavailable (a RedisError) when no
        node of REDIS_URL answers."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> _Cluster:
        timeout = self.config.redis_timeout_seconds
        try:
            return _Cluster.from_url(
                self.config.redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), CLUSTER_RETRIES),
                # Serve the shards whose slots have a node even when another
                # master is down with no replica to take over.
                require_full_coverage=False,
            )
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.cluster, name)

    def get_encoder(self) -> Encoder:
        # Script objects ask for it when they are made, before any connection.
        return Encoder("utf-8", "strict", False)

    def register_script(self, script: str) -> Script:
        return Script(self, script)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

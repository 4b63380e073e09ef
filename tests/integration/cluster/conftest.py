"""A real Redis Cluster for the tests of this folder: 3 masters, 3 replicas.

One cluster for the session (``benchmarks.localcluster.LocalCluster``: one
``redis-server --cluster-enabled yes`` per node on free loopback ports, with
its append-only file in a temporary directory, joined by ``redis-cli
--cluster create``; ``cluster-node-timeout`` 1000 ms so a failover takes
seconds). Each test gets its own key prefix and PostgreSQL schema, like the
other integration tests, and a cluster that is healthy when it starts: a test
that kills, stops or reconfigures nodes leaves them to the ``cluster``
fixture, which brings every node back and waits for ``cluster_state:ok``.
Nothing outside the temporary directory and these ports is touched; CI
starts nothing for it.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest

from benchmarks import localcluster
from benchmarks.localcluster import LocalCluster
from payload_stats.buffer.connection import redis_client
from payload_stats.config import Config

# Server settings tests may change with CONFIG SET, and their values here.
DEFAULTS = {
    "appendfsync": "everysec",
    "min-replicas-to-write": "0",
    "min-replicas-max-lag": "10",
    "cluster-replica-no-failover": "no",
}


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    if not localcluster.available():
        pytest.skip("redis-server and redis-cli are needed for the cluster tests")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def restore(cluster: LocalCluster) -> None:
    """Every node running, with the default settings, and the cluster healthy."""
    for node in cluster.nodes:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGCONT)
        if not node.running:
            node.proc = None
            node.start()
    for node in cluster.nodes:
        for name, value in DEFAULTS.items():
            node.call("CONFIG", "SET", name, value)
    cluster.wait_healthy(60)


@pytest.fixture
def cluster(redis_cluster: LocalCluster) -> Iterator[LocalCluster]:
    restore(redis_cluster)
    yield redis_cluster
    restore(redis_cluster)


@pytest.fixture
def shards() -> int:
    """Eight shards: every master holds two or more of them."""
    return 8


@pytest.fixture
def key_prefix(cluster: LocalCluster) -> Iterator[str]:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    restore(cluster)  # a test may have left a node down
    client = redis_client(Config(redis_url=cluster.url, redis_cluster=True))
    try:
        for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def config(cluster: LocalCluster, pg_schema: str, key_prefix: str, shards: int) -> Config:
    return Config(
        redis_url=cluster.url,
        redis_cluster=True,
        database_url=pg_schema,
        window_seconds=300,
        flush_grace_seconds=5,
        shards=shards,
        key_prefix=key_prefix,
        flush_batch_size=7,  # small, so tests cross batch boundaries
    )

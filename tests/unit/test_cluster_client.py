"""The Redis Cluster client and the per-shard ingest split, without a cluster.

The real cluster tests are in tests/integration/cluster/; these check what
needs none: building the client touches no network, a cluster that cannot
be reached is a RedisError (so every caller answers 503 or retries), and the
per-shard results map back onto each request's payloads.
"""

from __future__ import annotations

import time

import pytest
from redis.exceptions import ConnectionError, RedisError

from payload_stats.buffer import cluster_ingest
from payload_stats.buffer.cluster_ingest import PartlyWritten, record_entries_per_shard
from payload_stats.buffer.connection import ClusterClient, ClusterUnavailable, redis_client
from payload_stats.buffer.ingest import Entry, Recorded
from payload_stats.buffer.keys import shard_of
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config
from payload_stats.web.app import create_app
from tests.conftest import payload

UNREACHABLE = Config(redis_url="redis://127.0.0.1:1/0", redis_cluster=True, shards=4)


def test_the_cluster_client_is_built_without_touching_the_network():
    client = redis_client(UNREACHABLE)
    assert isinstance(client, ClusterClient)
    Scripts(client)  # registering scripts needs no connection either
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable) as caught:
        client.ping()
    assert time.monotonic() - started < 2
    assert isinstance(caught.value, RedisError)
    assert "\n" not in str(caught.value)


def test_a_request_answers_503_quickly_when_no_node_answers():
    client = create_app(UNREACHABLE).test_client()
    started = time.monotonic()
    resp = client.post("/stats", json=payload())
    assert time.monotonic() - started < 2
    assert resp.status_code == 503
    assert resp.get_json()["error"] == "unavailable"
    assert resp.headers["Retry-After"] == "1"


def tokens_in_shards(shards: int, wanted: list[int]) -> list[str]:
    """A token for each shard of ``wanted``, in order."""
    found, i = [], 0
    for shard in wanted:
        while shard_of(f"t{i}", shards) != shard:
            i += 1
        found.append(f"t{i}")
        i += 1
    return found


class FailingShards:
    """Stands in for ``_send_all``: each call's outcome string ("c" per payload),
    or an error for the calls of failing shards."""

    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.calls: list[tuple[int, int]] = []  # (shard, payloads)

    def __call__(self, redis, scripts, config, calls):
        results = []
        for call in calls:
            n = sum(end - start for start, end in call.spans)
            self.calls.append((call.shard, n))
            failed = call.shard in self.failing
            results.append(ConnectionError(f"shard {call.shard}") if failed else b"c" * n)
        return results


def test_one_call_per_shard_and_each_request_gets_its_own_result(monkeypatch):
    config = Config(redis_url="redis://127.0.0.1:1/0", redis_cluster=True, shards=4)
    t = tokens_in_shards(4, [0, 1, 2, 3, 1, 2])
    send = FailingShards(failing={2})
    monkeypatch.setattr(cluster_ingest, "_send_all", send)
    entries = [
        Entry([payload(token=t[0])], 0.0),  # shard 0 only
        Entry([payload(token=t[2])], 0.0),  # shard 2 only: its call failed
        Entry([payload(token=t[1]), payload(token=t[2]), payload(token=t[3])], 0.0),  # a batch
        Entry([payload(token=t[4]), payload(token=t[0], sessionDuration=5)], 0.0),  # shards 1, 0
    ]
    results = record_entries_per_shard(None, None, config, entries)
    # One call per shard, each carrying every request's payloads of that shard.
    assert sorted(send.calls) == [(0, 2), (1, 2), (2, 2), (3, 1)]
    assert results[0] == Recorded(accepted=1, duplicates=0, sessions=0)
    assert isinstance(results[1], ConnectionError) and not isinstance(results[1], PartlyWritten)
    assert isinstance(results[2], PartlyWritten)
    assert results[2].written == [0, 2]
    assert results[2].recorded.accepted == 2
    assert results[3] == Recorded(accepted=2, duplicates=0, sessions=0)

"""Failures on a real Redis Cluster: a shard down, a master killed, a replica cut off.

- A batch over every shard while one master is stopped (its replica may not
  take over): 503 ``partially_written`` naming the payloads written; the same
  batch resent once the master is back counts only the others.
- Group commit: a Redis error fails exactly the requests whose shard call failed.
- A master SIGKILLed while devices post continuously (each payload retried
  until it is answered 2xx, as devices do): ingest recovers by itself once the
  replica is promoted; the payloads answered 2xx are compared with what the
  flush writes.
- A master whose replica's link broke (its output buffer limit was passed)
  keeps answering 2xx by default: those payloads are lost when it is killed.
  With ``min-replicas-to-write 1`` or ``STATS_REDIS_WAIT_REPLICAS=1`` they are
  answered 503 instead, resent, and counted once.

Each failover test prints one ``cluster-measurement`` line (run with ``-s``):
docs/deployment.md, "Redis Cluster", quotes them.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from redis.exceptions import ConnectionError, RedisError

from payload_stats.buffer.cluster_ingest import PartlyWritten
from payload_stats.buffer.ingest import Entry, Recorded, record_entries
from payload_stats.buffer.keys import Keys, shard_of
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.ingest.group_commit import GroupCommit
from payload_stats.web.app import create_app
from tests.conftest import START, payload
from tests.integration.test_flush import K0, end_of
from tests.support.drive import flush_time
from tests.support.model import Model
from tests.support.store import assert_drained, stats_table

# --- helpers -------------------------------------------------------------------------------------


def master_and_its_shards(config: Config, cluster) -> tuple[Any, list[int]]:
    """The master serving shard 0, and every shard it serves."""
    keys = Keys(config.key_prefix)
    master = cluster.master_of(keys.windows(0))
    shards = [s for s in range(config.shards) if cluster.master_of(keys.windows(s)) is master]
    return master, shards


def tokens_in(shards: set[int], config: Config, prefix: str, n: int) -> list[str]:
    """``n`` tokens whose shard is in ``shards``."""
    found = []
    for i in itertools.count():
        token = f"{prefix}-{i}"
        if shard_of(token, config.shards) in shards:
            found.append(token)
            if len(found) == n:
                return found
    raise AssertionError("unreachable")


def flushed(pool, config: Config, redis, at: float) -> dict:
    flush_once(redis, pool, config, lambda: at)
    return stats_table(pool)


def payload_count(rows: dict) -> int:
    return sum(row.payloads for row in rows.values())


def measurement(**figures: Any) -> None:
    print("cluster-measurement " + json.dumps(figures, sort_keys=True))


# --- a batch over shards, one of them down -------------------------------------------------------


def test_batch_with_a_shard_down_names_what_was_written_and_a_resend_counts_once(
    config, cluster, pool, clock
):
    app = create_app(config, clock=clock)
    client = app.test_client()
    down, down_shards = master_and_its_shards(config, cluster)
    batch = [
        payload(token=f"b-{i}", content=f"m{i % 3}", cdn=1, p2p=i, sessionDuration=1000 + i)
        for i in range(40)
    ]
    on_down = [i for i, p in enumerate(batch) if shard_of(p["token"], config.shards) in down_shards]
    assert 0 < len(on_down) < len(batch)
    # Its replica may not take over: the shard stays down until it is back.
    for replica in cluster.replicas_of(down):
        replica.call("CONFIG", "SET", "cluster-replica-no-failover", "yes")
    down.shutdown()

    started = time.monotonic()
    resp = client.post("/stats/batch", json=batch)
    assert time.monotonic() - started < 2, "a shard down must be answered quickly"
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    body = resp.get_json()
    written = [i for i in range(len(batch)) if i not in on_down]
    assert body["error"] == "partially_written"
    assert body["written"] == written
    assert (body["accepted"], body["duplicates"]) == (len(written), 0)

    # A single payload of that shard fails alone; one of another shard is written.
    alone = dict(batch[on_down[0]], sessionDuration=5)
    assert client.post("/stats", json=alone).status_code == 503
    other = dict(batch[written[0]], sessionDuration=5)
    assert client.post("/stats", json=other).status_code == 200

    down.start()
    cluster.wait_healthy()
    again = client.post("/stats/batch", json=batch)
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == {"accepted": len(on_down), "duplicates": len(written)}
    assert client.post("/stats", json=alone).get_json() == {"accepted": 1, "duplicates": 0}

    redis = app.extensions["payload_stats"].redis
    rows = flushed(pool, config, redis, flush_time(end_of(K0, config), config))
    model = Model.of(config)
    for p in [*batch, other, alone]:
        model.receive(START, p)
    assert rows == model.rows()
    assert_drained(redis, config)


def test_group_commit_fails_exactly_the_requests_of_the_failed_shard(config, cluster, redis):
    down, down_shards = master_and_its_shards(config, cluster)
    up_shards = set(range(config.shards)) - set(down_shards)
    bad = tokens_in(set(down_shards), config, "bad", 2)
    good = tokens_in(up_shards, config, "good", 3)
    for replica in cluster.replicas_of(down):
        replica.call("CONFIG", "SET", "cluster-replica-no-failover", "yes")
    down.shutdown()

    scripts = Scripts(redis)
    calls: list[int] = []
    release = threading.Event()

    def write(entries):
        calls.append(len(entries))
        if len(calls) == 1:
            release.wait(10)  # the others queue meanwhile and go in one call
        return record_entries(redis, scripts, config, entries)

    commit = GroupCommit(write)
    requests = {
        "first": [payload(token=good[0])],
        "bad": [payload(token=bad[0])],
        "good": [payload(token=good[1])],
        "batch": [payload(token=good[2]), payload(token=bad[1])],
    }
    results: dict[str, Any] = {}

    def send(name: str) -> None:
        try:
            results[name] = commit.record(Entry(requests[name], START))
        except Exception as exc:
            results[name] = exc

    first = threading.Thread(target=send, args=("first",))
    first.start()
    while not calls:
        time.sleep(0.001)
    others = [threading.Thread(target=send, args=(n,)) for n in ("bad", "good", "batch")]
    for t in others:
        t.start()
    while len(commit._queue) < 3:
        time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join(10)

    assert calls == [1, 3]  # the three queued requests shared one write
    assert results["first"] == Recorded(accepted=1, duplicates=0, sessions=1)
    assert results["good"] == Recorded(accepted=1, duplicates=0, sessions=1)
    assert isinstance(results["bad"], ConnectionError)
    assert isinstance(results["batch"], PartlyWritten) and results["batch"].written == [0]


def test_a_master_down_leaves_the_web_ready_and_the_flush_waiting(config, cluster, pool, clock):
    """Readiness stays: the other masters' shards are served. The flush fails
    loudly while a shard cannot be read, keeps everything, and writes it all once
    the master is back."""
    app = create_app(config, clock=clock)
    client = app.test_client()
    sent = [payload(token=f"r-{i}", cdn=1, p2p=0) for i in range(30)]
    for p in sent:
        assert client.post("/stats", json=p).status_code == 200
    down, _ = master_and_its_shards(config, cluster)
    for replica in cluster.replicas_of(down):
        replica.call("CONFIG", "SET", "cluster-replica-no-failover", "yes")
    down.shutdown()

    assert client.get("/readyz").status_code == 200
    redis = app.extensions["payload_stats"].redis
    at = flush_time(end_of(K0, config), config)
    with pytest.raises(RedisError):
        flush_once(redis, pool, config, lambda: at)
    assert stats_table(pool) == {}

    down.start()
    cluster.wait_healthy()
    rows = flushed(pool, config, redis, at)
    assert payload_count(rows) == len(sent)
    assert_drained(redis, config)


# --- failover ------------------------------------------------------------------------------------


@dataclass
class Devices:
    """Threads posting fresh payloads (cdn=1 each) to an app and retrying each one
    every 50 ms until it is answered 2xx, as devices do."""

    client_of: Any  # () -> a Flask test client
    tokens: Any  # (thread, n) -> token
    model: Model = field(default_factory=Model)
    statuses: Counter = field(default_factory=Counter)
    failures_at: list[float] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def run(self, n: int) -> None:
        client = self.client_of()
        try:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                p = payload(token=self.tokens(n, i), cdn=1, p2p=0, sessionDuration=30_000)
                deadline = time.monotonic() + 30
                while True:
                    resp = client.post("/stats", json=p)
                    with self.lock:
                        self.statuses[resp.status_code] += 1
                    if resp.status_code == 200:
                        with self.lock:
                            self.model.receive(START, p)
                            self.acked_at.append(time.monotonic())
                        break
                    assert resp.status_code == 503, resp.get_json()
                    with self.lock:
                        self.failures_at.append(time.monotonic())
                    assert time.monotonic() < deadline, "a payload was refused for 30 s"
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test thread
            self.errors.append(exc)

    def start(self, threads: int) -> list[threading.Thread]:
        started = [threading.Thread(target=self.run, args=(n,)) for n in range(threads)]
        for t in started:
            t.start()
        return started


PROFILES = {
    # Redis's defaults: asynchronous replication, fsync every second.
    "default": ({}, {}),
    # The strongest settings: every write fsync'd, a master refuses writes
    # without a replica, and a write is answered only once a replica has it.
    "strict": (
        {"appendfsync": "always", "min-replicas-to-write": "1"},
        {"redis_wait_replicas": 1, "redis_timeout_seconds": 0.4},
    ),
}


@pytest.mark.parametrize("profile", list(PROFILES))
def test_master_killed_while_devices_post(config, cluster, pool, profile):
    server, changes = PROFILES[profile]
    config = replace(config, **changes)
    for node in cluster.nodes:
        for name, value in server.items():
            node.call("CONFIG", "SET", name, value)
    victim, victim_shards = master_and_its_shards(config, cluster)
    devices = Devices(
        client_of=lambda: create_app(config, clock=lambda: START).test_client(),
        tokens=lambda n, i: f"d{n}-{i}",
    )
    threads = devices.start(4)
    try:
        time.sleep(1.0)
        before = sum(devices.statuses.values())
        killed = time.monotonic()
        victim.kill()
        cluster.wait_master(Keys(config.key_prefix).windows(victim_shards[0]), victim)
        promoted = time.monotonic()
        restarted = None
        if server.get("min-replicas-to-write"):
            # The promoted master has no replica left: it refuses writes until
            # one joins. The killed node comes back as its replica.
            time.sleep(1.0)
            victim.start()
            restarted = time.monotonic()
        # Ingest on the victim's shards recovers by itself.
        deadline = time.monotonic() + 20
        while not (devices.acked_at and devices.acked_at[-1] > (restarted or promoted) + 0.5):
            assert time.monotonic() < deadline, "ingest did not recover"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        devices.stop.set()
        for t in threads:
            t.join(60)
    assert devices.errors == []
    failing = [t for t in devices.failures_at if t >= killed]
    recovered = min((t for t in devices.acked_at if t > max(failing, default=killed)), default=None)
    assert recovered is not None

    redis = create_app(config).extensions["payload_stats"].redis
    rows = flushed(pool, config, redis, flush_time(end_of(K0, config), config))
    acked = payload_count(devices.model.rows())
    counted = payload_count(rows)
    measurement(
        test="master killed while devices post",
        profile=profile,
        acked_2xx=acked,
        counted=counted,
        lost=acked - counted,
        answers=dict(devices.statuses),
        posted_before_kill=before,
        failover_s=round(promoted - killed, 2),
        restart_of_killed_node_s=round(restarted - killed, 2) if restarted else None,
        ingest_back_after_s=round(recovered - killed, 2),
    )
    # Nothing is ever counted twice, whatever was lost.
    expected = devices.model.rows()
    assert set(rows) <= set(expected)
    assert all(rows[k] <= expected[k] for k in rows)
    if profile == "strict":
        assert counted == acked  # a 2xx was on two nodes
    assert recovered - killed < 15


CUT_OFF = {
    "async": ({}, {}),
    "min-replicas-to-write": ({"min-replicas-to-write": "1"}, {}),
    "wait": ({}, {"redis_wait_replicas": 1, "redis_timeout_seconds": 0.2}),
}


@pytest.mark.parametrize("setting", list(CUT_OFF))
def test_replica_cut_off_then_master_killed(config, cluster, pool, redis, setting):
    """The replica stops reading (SIGSTOP) and the master drops it when its output
    buffer passes 1 MB; payloads then reach the master alone, which is killed."""
    server, changes = CUT_OFF[setting]
    config = replace(config, **changes)
    master, shards = master_and_its_shards(config, cluster)
    replica = cluster.replicas_of(master)[0]
    for name, value in server.items():
        for node in cluster.nodes:
            node.call("CONFIG", "SET", name, value)
    master.call("CONFIG", "SET", "client-output-buffer-limit", "replica 1mb 0 0")
    app = create_app(config, clock=lambda: START)
    client = app.test_client()

    replica.signal(signal.SIGSTOP)
    filler = f"{config.key_prefix}:{{{shards[0]}}}:filler"
    for i in range(8):
        redis.set(f"{filler}-{i}", b"x" * (1 << 20))
        if master.info("replication")["connected_slaves"] == 0:
            break
    assert master.info("replication")["connected_slaves"] == 0

    sent = [payload(token=t, cdn=1, p2p=0) for t in tokens_in(set(shards), config, "cut", 10)]
    first = [client.post("/stats", json=p).status_code for p in sent]
    master.kill()
    replica.signal(signal.SIGCONT)
    promoted = cluster.wait_master(Keys(config.key_prefix).windows(shards[0]), master)
    if setting != "async":
        master.start()  # the new master needs a replica to take writes (or to WAIT for)
        cluster.wait_healthy()
    assert promoted is replica

    # The devices resend what was not answered 2xx, until it is.
    model = Model.of(config)
    acked_before = first.count(200)
    for p, status in zip(sent, first, strict=True):
        deadline = time.monotonic() + 20
        while status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            status = client.post("/stats", json=p).status_code
        model.receive(START, p)

    rows = flushed(pool, config, redis, flush_time(end_of(K0, config), config))
    lost = len(sent) - payload_count(rows)
    measurement(
        test="replica cut off, then master killed",
        setting=setting,
        sent=len(sent),
        answered_2xx_before_kill=acked_before,
        lost_after_2xx=lost,
    )
    if setting == "async":
        assert acked_before == len(sent) and lost == len(sent)
    else:
        assert acked_before == 0 and lost == 0
        assert rows == model.rows()

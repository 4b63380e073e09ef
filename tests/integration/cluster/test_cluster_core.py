"""The service on a real Redis Cluster (3 masters, 3 replicas): the core scenarios.

Exact totals across windows with several web apps and several flushers at
once, the flusher killed at a failpoint (a ``flush`` subprocess) then run
again, stragglers, the live view, health and metrics, the recorded settings,
and every command of the CLI with ``STATS_REDIS_CLUSTER=1``. Expected rows
come from the same reference model (tests/support/model.py) as the
single-Redis tests, compared exactly.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import defaultdict
from dataclasses import replace

import pytest
from redis import RedisCluster

from payload_stats.buffer import snapshots
from payload_stats.buffer.connection import ClusterClient, redis_client
from payload_stats.buffer.keys import Keys
from payload_stats.buffer.live import top_rows
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.flush.lock import flush_with_lock
from payload_stats.postgres.pool import database_pool
from payload_stats.web.app import create_app
from tests.conftest import START, FakeClock, payload
from tests.integration.test_cli import FAILPOINT_EXIT_CODE, _post, parse_summary, past_base
from tests.integration.test_cli import populate as populate_closed
from tests.integration.test_flush import K0, end_of, populate, report_totals
from tests.support.drive import Feeder, flush_time
from tests.support.model import Model
from tests.support.servers import (
    cli_environment,
    free_port,
    run_cli,
    start_cli,
    stop,
    wait_for_port,
)
from tests.support.store import assert_drained, stats_table


def shards_per_master(config: Config, cluster) -> dict[int, list[int]]:
    """{master port: the shards whose slot it serves}."""
    found = defaultdict(list)
    for shard in range(config.shards):
        found[cluster.master_of(Keys(config.key_prefix).windows(shard)).port].append(shard)
    return dict(found)


def test_the_client_is_a_cluster_client_and_shards_span_every_master(config, cluster, redis):
    assert isinstance(redis, ClusterClient)
    assert isinstance(redis.cluster, RedisCluster)
    placed = shards_per_master(config, cluster)
    assert len(placed) == 3, placed
    assert sorted(s for shards in placed.values() for s in shards) == list(range(config.shards))


def test_flush_walks_every_shard_on_every_master(redis, pool, config, clock, cluster):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=3, pairs=30)
    # Every master holds live counters of the deployment.
    for port in shards_per_master(config, cluster):
        node = cluster.node(port)
        keys = node.client().keys(f"{config.key_prefix}:*")
        assert any(b":w:" in k for k in keys), port

    clock.now = flush_time(ends[-1], config)
    report = flush_once(redis, pool, config, clock)
    assert report_totals(report) == {end: feeder.model.window_totals(end) for end in ends}
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def test_several_apps_and_flushers_at_once_count_exactly(config, pool, cluster):
    """Three web apps (threads, each its own clients and clock) post single payloads
    and batches across windows while two flushers race; then every row is exact."""
    length = config.window_seconds
    model = Model.of(config)
    lock = threading.Lock()
    flush_clock = FakeClock(START)
    errors: list[BaseException] = []
    stop = threading.Event()
    posting_done = threading.Event()
    statuses: list[int] = []

    def poster(n: int) -> None:
        rng = random.Random(n)
        app_clock = FakeClock(START)
        client = create_app(config, clock=app_clock).test_client()
        try:
            for i in range(120):
                # The open window, or the one before (often flushed already).
                k = int(flush_clock.now // length) - rng.choice([0, 0, 1])
                app_clock.now = k * length + rng.uniform(0, length - 0.001)
                body = [
                    payload(
                        token=f"p{n}-{i}-{j}",
                        customer=f"c{rng.randrange(3)}",
                        content=f"m{rng.randrange(5)}",
                        cdn=rng.randrange(10**6),
                        p2p=rng.choice([0, rng.randrange(10**6)]),
                        sessionDuration=rng.choice([1200, 400_000]),
                    )
                    for j in range(rng.choice([1, 1, 5]))
                ]
                if len(body) == 1:
                    resp = client.post("/stats", json=body[0])
                else:
                    resp = client.post("/stats/batch", json=body)
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    assert resp.get_json() == {"accepted": len(body), "duplicates": 0}
                    with lock:
                        for p in body:
                            model.receive(app_clock.now, p)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def flusher() -> None:
        r = redis_client(config)
        p = database_pool(config, 2)
        try:
            while not stop.is_set():
                flush_with_lock(r, p, config, flush_clock)
                flush_once(r, p, config, flush_clock)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            r.close()
            p.closeall()

    posters = [threading.Thread(target=poster, args=(n,)) for n in range(3)]
    flushers = [threading.Thread(target=flusher) for _ in range(2)]
    for t in posters + flushers:
        t.start()
    try:
        while any(t.is_alive() for t in posters):
            time.sleep(0.02)
            flush_clock.advance(length / 8)
    finally:
        posting_done.set()
        stop.set()
        for t in posters + flushers:
            t.join(60)
    assert errors == []
    assert statuses and set(statuses) == {200}

    flush_clock.advance(3 * length)
    redis = redis_client(config)
    try:
        flush_once(redis, pool, config, flush_clock)
        assert stats_table(pool) == model.rows()
        assert_drained(redis, config)
    finally:
        redis.close()


def test_stragglers_after_a_freeze_land_in_the_same_row(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    end = end_of(K0, config)
    feeder.send([feeder.make(cdn=100, p2p=10), feeder.make("b", "x", cdn=1, p2p=1)], START)
    clock.now = flush_time(end, config)
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()

    late = []

    def straggle(point: str) -> None:
        # Received in window K0, reaching Redis while the flush runs.
        if point in ("after_freeze", "mid_batch"):
            p = feeder.make("late", point, cdn=len(late) + 1, p2p=1)
            late.append(p)
            feeder.send([p], end - 1)

    feeder.send([feeder.make("late", "before", cdn=5, p2p=6)], end - 1)
    flush_once(redis, pool, config, clock, failpoint=straggle)
    flush_once(redis, pool, config, clock)
    assert late
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, config)


def test_live_view_reads_every_shard(client, redis, config, clock):
    for i in range(24):
        body = payload(token=f"live-{i}", customer="acme", content=f"m{i % 2}", cdn=10, p2p=i)
        assert client.post("/stats", json=body).status_code == 200
    read = top_rows(redis, config, limit=None)
    assert read.complete
    rows = sorted(read.rows, key=lambda r: r.content)
    assert [(r.content, r.cdn, r.p2p, r.payloads) for r in rows] == [
        ("m0", 120, sum(range(0, 24, 2)), 12),
        ("m1", 120, sum(range(1, 24, 2)), 12),
    ]
    resp = client.get("/stats/live?customer=acme")
    assert resp.status_code == 200
    assert sum(r["payloads"] for r in resp.get_json()["rows"]) == 24


def test_readyz_and_metrics_on_a_cluster(client, pool, config):
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["checks"]["redis_eviction"] == "ok"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "payload_stats_redis_up 1.0" in metrics


def test_an_evicting_master_is_refused(redis, config, cluster):
    from payload_stats.buffer.memory import EvictionPolicyError, check_eviction_policy

    master = cluster.primaries()[1]
    master.call("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(EvictionPolicyError):
            check_eviction_policy(redis)
    finally:
        master.call("CONFIG", "SET", "maxmemory-policy", "noeviction")
    check_eviction_policy(redis)


def test_the_lock_and_the_figures_live_in_one_slot(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    ends = populate(feeder, windows=1)
    clock.now = flush_time(ends[0], config)
    other = redis.lock(Keys(config.key_prefix).flush_lock(), timeout=30, thread_local=False)
    assert other.acquire(blocking=False)
    assert flush_with_lock(redis, pool, config, clock) is None  # held by "another flusher"
    other.release()
    assert flush_with_lock(redis, pool, config, clock) is not None
    assert stats_table(pool) == feeder.model.rows()


# --- the CLI with STATS_REDIS_CLUSTER=1 ----------------------------------------------------------


@pytest.fixture
def cli_config(config: Config) -> Config:
    return replace(config, window_seconds=1, flush_grace_seconds=0, flush_lock_seconds=1)


def cluster_env(config: Config, **extra: str) -> dict[str, str]:
    return cli_environment(config, STATS_REDIS_CLUSTER="1", **extra)


@pytest.mark.parametrize("point", ["mid_batch", "after_commit"])
def test_flush_killed_at_a_failpoint_then_flush(redis, pool, cli_config, point):
    feeder = Feeder(redis, cli_config)
    populate_closed(feeder, past_base(), windows=3, pairs=2 * cli_config.flush_batch_size + 1)
    env = cluster_env(cli_config)

    crashed = run_cli({**env, "STATS_FAILPOINT": point}, "flush")
    assert crashed.returncode == FAILPOINT_EXIT_CODE, (crashed.stdout, crashed.stderr)
    assert snapshots.pending_snapshots(redis, cli_config)
    ends = feeder.model.ends()

    done = run_cli(env, "flush")
    assert done.returncode == 0, done.stderr
    written = parse_summary(done.stdout)
    assert sorted(written) == ends
    if point == "after_commit":  # the first window was committed by the killed run
        assert written[ends[0]] == dict.fromkeys(written[ends[0]], 0)
    assert stats_table(pool) == feeder.model.rows()
    assert_drained(redis, cli_config)


def test_every_command_runs_on_the_cluster(redis, pool, cli_config):
    env = cluster_env(cli_config)
    assert run_cli(env, "init-db").returncode == 0
    shown = run_cli(env, "settings")
    assert shown.returncode == 0, shown.stderr
    assert f"STATS_SHARDS: here {cli_config.shards}, recorded {cli_config.shards}" in shown.stdout
    # Which master serves which shards: all 8, on the 3 masters.
    placed = re.findall(r"^  127\.0\.0\.1:(\d+)  (\d+)  \(([\d, ]+)\)$", shown.stdout, re.M)
    assert len(placed) == 3
    assert sorted(int(s) for *_, shards in placed for s in shards.split(", ")) == list(range(8))
    # One record of the settings for the whole cluster: one key, in one slot.
    assert redis.hgetall(Keys(cli_config.key_prefix).deployment()) == {
        b"window_seconds": b"1",
        b"shards": str(cli_config.shards).encode(),
    }
    feeder = Feeder(redis, cli_config)
    populate_closed(feeder, past_base(), windows=2, pairs=5)
    live = run_cli(env, "live", "--once")
    assert live.returncode == 0, live.stderr
    done = run_cli(env, "flush")
    assert done.returncode == 0, done.stderr
    assert stats_table(pool) == feeder.model.rows()

    # A process with other settings is refused, against the cluster's record.
    refused = run_cli(cluster_env(cli_config, STATS_SHARDS="3"), "live", "--once")
    assert refused.returncode == 2
    assert "STATS_SHARDS is 3 here but this deployment recorded" in refused.stderr


def test_a_single_redis_client_on_a_cluster_node_is_refused(cli_config, pool):
    failed = run_cli(cli_environment(cli_config), "flush", timeout=30)
    assert failed.returncode == 2, (failed.stdout, failed.stderr)
    assert "set STATS_REDIS_CLUSTER=1" in failed.stderr


def test_the_cluster_mode_on_a_single_redis_is_refused(cli_config, pool, redis_url):
    single = replace(cli_config, redis_url=redis_url.rsplit("/", 1)[0] + "/0")
    failed = run_cli(cluster_env(single), "flush", timeout=30)
    assert failed.returncode == 2, (failed.stdout, failed.stderr)
    assert "not in cluster mode" in failed.stderr


@pytest.mark.slow
def test_serve_and_a_second_web_process_on_the_cluster(pool, cli_config, tmp_path):
    """``serve`` (web and scheduler) with the cluster as its external Redis, plus
    a second ``web`` process: every payload answered 200 is flushed exactly once."""
    config = replace(cli_config, window_seconds=2, flush_grace_seconds=0.5)
    env = cluster_env(config, STATS_FLUSH_INTERVAL_SECONDS="0.5", STATS_DATA_DIR=str(tmp_path))
    ports = [free_port(), free_port()]
    log = tmp_path / "processes.log"
    procs = [
        start_cli(
            env,
            "serve",
            "--bind",
            f"127.0.0.1:{ports[0]}",
            "--workers",
            "2",
            log=log,
            new_session=True,
        ),
        start_cli(
            env,
            "web",
            "--bind",
            f"127.0.0.1:{ports[1]}",
            "--workers",
            "1",
            log=log,
            new_session=True,
        ),
    ]
    try:
        for port, proc in zip(ports, procs, strict=True):
            wait_for_port(port, proc)
        sent = 80
        for i in range(sent):
            body = payload(token=f"web-{i}", content=f"m{i % 4}", cdn=1, p2p=i)
            url = f"http://127.0.0.1:{ports[i % 2]}/stats"
            assert _post(url, body) == (200, {"accepted": 1, "duplicates": 0})
            time.sleep(0.02)
        deadline = time.monotonic() + 15

        def totals() -> tuple[int, int]:
            rows = stats_table(pool).values()
            return sum(r.payloads for r in rows), sum(r.p2p for r in rows)

        while totals() != (sent, sum(range(sent))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert totals() == (sent, sum(range(sent)))
    finally:
        for proc in procs:
            stop(proc)
        print(log.read_text(errors="replace") if log.exists() else "")  # shown on failure

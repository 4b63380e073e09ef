"""The phases of one harness run, against one private sandbox.

Load phases interleave their servers: every server is started at once, and
the phase's duration is cut into slices (``Options.slice_seconds``) run in
rotation -- project, direct, naive-pg, bare, project again... -- so a burst
of another process on a shared machine hits every peer alike. After each
slice the server is drained (a probe request waits for its backlog) before
the next server is loaded.

``run(options)`` returns the results as plain data (what ``--json`` writes);
``report.rows`` turns them into the ratio table.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from redis import Redis

from payload_stats.buffer.keys import Keys
from payload_stats.config import Config

from . import availability, clusterdrive, flushbench, localcluster, memory, sandbox
from .load import LoadResult, LoadSpec, combine, run_load
from .localcluster import LocalCluster, Node
from .peers import naive_pg
from .servers import (
    PEERS,
    PROJECT,
    PROJECT_CONFIG,
    Server,
    WorkerSetup,
    gevent_available,
    start_all,
    stop_all,
)

logger = logging.getLogger(__name__)

LOAD_PHASES = ("project", "direct", "naive-pg", "bare", "batch")
PHASES = (
    *LOAD_PHASES,
    "half-load",
    "flush",
    "memory",
    "workers",
    "profile",
    "availability",
    "cluster",
    "history",
)
# history fills a year of rows (tens of minutes at least): only when asked for.
DEFAULT_PHASES = tuple(
    p for p in PHASES if p not in ("workers", "profile", "availability", "cluster", "history")
)
# label: (masters, replicas per master, redis-server options, service environment)
CLUSTER_SETUPS: dict[str, tuple[int, int, tuple[str, ...], dict[str, str]]] = {
    "1": (1, 0, (), {}),
    "3": (3, 0, (), {}),
    "3+3": (3, 1, (), {}),
    "3+3 strict": (
        3,
        1,
        ("--appendfsync", "always", "--min-replicas-to-write", "1"),
        {"STATS_REDIS_WAIT_REPLICAS": "1"},
    ),
}
DEFAULT_WORKER_SETUPS = ("sync", "sync:2", "gthread:2x4", "gthread:5x2", "gevent:2", "gevent:5")


@dataclass
class Options:
    duration: float = 10.0  # seconds per load phase and server, in slices
    slice_seconds: float = 2.0
    connections: int = 32
    threads: int = 1  # wrk threads
    close: bool = False  # Connection: close on every request
    loader: str = "auto"  # auto (wrk if installed), wrk, python
    only: tuple[str, ...] = DEFAULT_PHASES
    batch_size: int = 500
    flush_keys: tuple[int, ...] = (10_000, 100_000)
    memory_keys: int = 100_000
    memory_tokens: int = 100_000
    # STATS_SHARDS in the cluster phase: 64 spread evenly over 3 masters (within
    # 5 %); 8, the default, puts 2, 4 and 2 shards on them (docs/capacity.md).
    cluster_shards: int = 64
    cluster_setups: tuple[str, ...] = tuple(CLUSTER_SETUPS)  # labels of CLUSTER_SETUPS
    history_keys: tuple[int, ...] = (100, 1000)  # keys per window: ~10.5 M and ~105 M rows
    history_days: int = 365
    history_reps: int = 100
    history_raw_reps: int = 10
    warmup: float = 1.0
    setup: WorkerSetup = field(default_factory=WorkerSetup)
    worker_setups: tuple[str, ...] = DEFAULT_WORKER_SETUPS
    redis_url: str = sandbox.DEFAULT_REDIS_URL
    database_url: str = sandbox.DEFAULT_DATABASE_URL
    # None: a fresh prefix and schema, removed at the end. Given (the tests'
    # fixtures): keys go under this prefix (deleted at the end) and
    # database_url is used as is, its search_path naming the caller's schema.
    key_prefix: str | None = None
    own_schema: bool = True
    profile_dir: str = "/tmp/payload-stats-profiles"
    # --only availability: connections held open by attackers, probes per figure,
    # counter hashes for the GET /stats/live figure (0: skip it).
    slow_clients: int = 200
    probes: int = 200
    live_keys: int = 200_000
    log: Callable[[str], None] = logger.info


@dataclass(frozen=True)
class Target:
    """One figure of a load phase: a server and what to send it."""

    name: str
    server: Server
    spec: LoadSpec
    # The Redis Cluster masters the server writes to: their CPU is measured
    # (each apart) instead of the harness's Redis server's.
    masters: tuple[Node, ...] = ()


PROBE = json.dumps(
    {
        "token": "probe",
        "customer": "probe",
        "content": "probe",
        "timespan": 0,
        "p2p": 0,
        "cdn": 1,
        "sessionDuration": 0,
    }
)


def drain(url: str, timeout: float = 60.0) -> None:
    """Wait until a worker answers a valid payload with 2xx.

    A new connection queues behind the ones already accepted, so its answer
    also means the backlog left by a load phase has been worked off.
    """
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
            conn.request("POST", "/stats", PROBE, {"Content-Type": "application/json"})
            status = conn.getresponse().status
            conn.close()
            if 200 <= status < 300:
                return
        except (OSError, http.client.HTTPException):
            status = None
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/stats answered {status} instead of 2xx")
        time.sleep(0.1)


class Run:
    """One run: the sandbox, the servers' environment, and the results so far."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.prefix = options.key_prefix or sandbox.new_prefix()
        self.schema = sandbox.Schema(options.database_url) if options.own_schema else None
        self.database_url = self.schema.url if self.schema else options.database_url
        self.redis = Redis.from_url(options.redis_url, socket_timeout=120)
        self.config = Config(
            redis_url=options.redis_url, database_url=self.database_url, key_prefix=self.prefix
        )
        self.results: dict[str, Any] = {"gunicorn_config": PROJECT_CONFIG, "load": {}}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(
            REDIS_URL=self.o.redis_url, DATABASE_URL=self.database_url, STATS_KEY_PREFIX=self.prefix
        )
        return env

    @contextmanager
    def servers(self, wanted: list[tuple[str, WorkerSetup | None]]) -> Iterator[list[Server]]:
        """Started servers, one per (app, setup) -- "project" or a peer -- stopped on exit."""
        servers = [
            Server(
                name,
                PROJECT if name == "project" else PEERS[name],
                self.env(),
                setup or self.o.setup,
            )
            for name, setup in wanted
        ]
        start_all(servers)
        try:
            for server in servers:
                drain(server.url)
            yield servers
        finally:
            stop_all(servers)

    def spec(self, server: Server, path: str = "/stats", **changes: Any) -> LoadSpec:
        spec = LoadSpec(
            url=server.url + path,
            duration=self.o.duration,
            connections=self.o.connections,
            threads=self.o.threads,
            close=self.o.close,
        )
        return replace(spec, **changes)

    def interleave(self, targets: list[Target]) -> dict[str, dict[str, Any]]:
        """Load every target for ``duration`` in rotating slices; combined results."""
        slices = max(1, round(self.o.duration / self.o.slice_seconds))
        length = self.o.duration / slices
        for t in targets:
            if self.o.warmup:
                run_load(replace(t.spec, duration=self.o.warmup), self.o.loader)
                drain(t.server.url)
        collected: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
        cpu = {t.name: [0.0, 0.0, 0.0, 0.0] for t in targets}  # worker user, sys; redis u, s
        per_master = {t.name: [0.0] * len(t.masters) for t in targets}
        for i in range(slices):
            shift = i % len(targets)
            for t in targets[shift:] + targets[:shift]:
                before = (*t.server.cpu_seconds(), *self.redis_cpu())
                masters_before = [m.cpu_seconds() for m in t.masters]
                collected[t.name].append(run_load(replace(t.spec, duration=length), self.o.loader))
                drain(t.server.url)
                after = (*t.server.cpu_seconds(), *self.redis_cpu())
                for n in range(4):
                    cpu[t.name][n] += after[n] - before[n]
                for n, m in enumerate(t.masters):
                    per_master[t.name][n] += m.cpu_seconds() - masters_before[n]
        results = {}
        for name, parts in collected.items():
            r = results[name] = combine(parts).as_dict()
            served = max(1, r["requests"] + r["slices"])  # the drain probes too
            wu, ws, ru, rs = (round(1e6 * c / served) for c in cpu[name])
            r.update(
                worker_cpu_us=wu + ws, worker_user_us=wu, worker_sys_us=ws, redis_cpu_us=ru + rs
            )
            if per_master[name]:
                masters_us = [round(1e6 * c / served, 1) for c in per_master[name]]
                r.update(redis_cpu_us=round(sum(masters_us)), redis_cpu_us_per_master=masters_us)
            self.o.log(
                f"  {name}: {r['rps']:,.0f} req/s ({r['payloads_per_s']:,.0f} payloads/s),"
                f" p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, non-2xx "
                f"{r['non2xx']}, errors {r['errors']}; CPU per request: workers "
                f"{wu} us user + {ws} us sys, redis {r['redis_cpu_us']} us "
                + (f"(per master {r['redis_cpu_us_per_master']} us) " if per_master[name] else "")
                + f"({r['loader']}, {r['slices']} slices)"
            )
        return results

    def redis_cpu(self) -> tuple[float, float]:
        """Redis server CPU seconds so far (the whole server: other clients count too)."""
        info = self.redis.info("cpu")
        return float(info["used_cpu_user"]), float(info["used_cpu_sys"])

    # -- phases ---------------------------------------------------------------

    def load_phases(self) -> None:
        """Max rate for the project and each peer, the batch phase, then half load."""
        only = set(self.o.only)
        names = [n for n in ("project", "direct", "naive-pg", "bare") if n in only]
        if {"batch", "half-load"} & only and "project" not in names:
            names.insert(0, "project")
        if "half-load" in only and "direct" not in names:
            names.append("direct")
        if "naive-pg" in names:
            naive_pg.init_db(self.database_url)
        with self.servers([(n, None) for n in names]) as started:
            servers = dict(zip(names, started, strict=True))
            targets = [Target(n, s, self.spec(s)) for n, s in servers.items()]
            if "batch" in only:
                targets.append(
                    Target(
                        "project-batch",
                        servers["project"],
                        self.spec(servers["project"], "/stats/batch", batch=self.o.batch_size),
                    )
                )
            self.o.log(
                f"load: {', '.join(t.name for t in targets)} at max rate, "
                f"{self.o.connections} connections"
            )
            results = self.interleave(targets)
            self.results["servers"] = {n: s.describe() for n, s in servers.items()}
            if "project-batch" in results:
                self.results["batch"] = {"project": results.pop("project-batch")}
            self.results["load"] = results
            if "half-load" in only:
                rate = results["project"]["rps"] / 2
                self.o.log(f"half load: project and direct at {rate:,.0f} req/s")
                half = self.interleave(
                    [
                        Target(n, servers[n], self.spec(servers[n], rate=rate))
                        for n in ("project", "direct")
                    ]
                )
                self.results["half_load"] = {"rate": round(rate, 1), **half}

    def flush_phase(self) -> None:
        self.results["flush"] = []
        for n in self.o.flush_keys:
            self.o.log(f"flush: {n:,} keys")
            result = flushbench.run(replace(self.config, key_prefix=f"{self.prefix}:f{n}"), n)
            self.o.log(
                f"  {result['rows_per_s']:,.0f} rows/s in {result['seconds']:.2f} s, "
                f"copy {result['copy_rows_per_s']:,.0f} rows/s"
            )
            self.results["flush"].append(result)

    def memory_phase(self) -> None:
        self.o.log(f"memory: {self.o.memory_keys:,} keys, {self.o.memory_tokens:,} tokens")
        self.results["memory"] = memory.run(
            self.redis, self.config, self.o.memory_keys, self.o.memory_tokens
        )

    def cluster_phase(self) -> None:
        """The project on local Redis Clusters started like the tests' one, all in
        one interleaved run, single payloads and batches: 1 master against 3 (no
        replicas: the Redis work per master), and 3 masters with a replica each,
        Redis's default settings against the strictest (CLUSTER_SETUPS)."""
        if not localcluster.available():
            self.o.log("cluster: redis-server and redis-cli are needed: skipped")
            return
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            clusters = {
                label: LocalCluster(Path(tmp) / label, masters, replicas, extra=server)
                for label, (masters, replicas, server, _) in CLUSTER_SETUPS.items()
                if label in self.o.cluster_setups or label in ("1", "3")
            }
            try:
                for label, cluster in clusters.items():
                    self.o.log(f"cluster: starting {label}")
                    cluster.start()
                self.results["cluster"] = self._cluster_load(clusters)
                self.results["cluster_drive"] = self._cluster_drive(clusters)
            finally:
                for cluster in clusters.values():
                    cluster.stop()

    def _cluster_load(self, clusters: dict[str, LocalCluster]) -> dict[str, Any]:
        servers = []
        shards = self.o.cluster_shards
        for label, cluster in clusters.items():
            env = self.env()
            env.pop("DATABASE_URL")  # ingest only: the shard count is not the run's
            env.update(REDIS_URL=cluster.url, STATS_REDIS_CLUSTER="1", STATS_SHARDS=str(shards))
            env.update(CLUSTER_SETUPS[label][3])
            servers.append(Server(f"cluster-{label}", PROJECT, env, self.o.setup))
        start_all(servers)
        try:
            for server in servers:
                drain(server.url)
            targets = []
            for (label, cluster), server in zip(clusters.items(), servers, strict=True):
                masters = tuple(cluster.primaries())
                targets.append(Target(label, server, self.spec(server), masters))
                batch = self.spec(server, "/stats/batch", batch=self.o.batch_size)
                targets.append(Target(f"{label}-batch", server, batch, masters))
            self.o.log(
                f"cluster: the project on {', '.join(clusters)}, single and batches of "
                f"{self.o.batch_size}, {self.o.connections} connections"
            )
            results = self.interleave(targets)
        finally:
            stop_all(servers)
        keys = Keys(self.prefix)
        found = {}
        for label, cluster in clusters.items():
            placed = Counter(cluster.master_of(keys.windows(s)).port for s in range(shards))
            found[label] = {
                "masters": cluster.masters,
                "replicas": cluster.replicas,
                "server": list(cluster.extra),
                "service": CLUSTER_SETUPS[label][3],
                "shards": shards,
                "shards_per_master": [placed[m.port] for m in cluster.primaries()],
                "single": results[label],
                "batch": results[f"{label}-batch"],
            }
        return found

    def _cluster_drive(self, clusters: dict[str, LocalCluster]) -> list[dict[str, Any]]:
        """The Redis side alone (benchmarks/clusterdrive.py) on 1 and 3 masters:
        groups of 256 requests (web workers under load) with the default 8 shards
        and with ``cluster_shards``, and one request per call with 8 shards."""
        found = []
        cases = sorted(
            {(8, 256), (self.o.cluster_shards, 256), (8, 1)}, key=lambda c: (-c[1], c[0])
        )
        for shards, group in cases:
            for label in ("1", "3"):
                cluster = clusters[label]
                prefix = f"{self.prefix}d{shards}g{group}"
                config = Config(
                    redis_url=cluster.url, redis_cluster=True, shards=shards, key_prefix=prefix
                )
                self.o.log(f"cluster drive: {label} master(s), {shards} shards, groups of {group}")
                r = clusterdrive.run(cluster, config, self.o.duration, group=group)
                placed = Counter(
                    cluster.master_of(Keys(prefix).windows(s)).port for s in range(shards)
                )
                r.update(
                    masters=cluster.masters,
                    shards=shards,
                    shards_per_master=[placed[m.port] for m in cluster.primaries()],
                )
                self.o.log(
                    f"  {r['payloads_per_s']:,.0f} payloads/s, Redis CPU per payload "
                    f"{r['redis_cpu_us']} us (per master {r['redis_cpu_us_per_master']})"
                )
                found.append(r)
        return found

    def workers_phase(self) -> None:
        setups = [(text, WorkerSetup.parse(text)) for text in self.o.worker_setups]
        if not gevent_available():
            self.o.log("workers: gevent is not installed (pip install gevent): skipped")
            setups = [(t, s) for t, s in setups if s.worker_class != "gevent"]
        self.o.log(f"workers: the project with {'; '.join(s.label for _, s in setups)}")
        with self.servers([("project", setup) for _, setup in setups]) as started:
            results = self.interleave(
                [
                    Target(text, server, self.spec(server))
                    for (text, _), server in zip(setups, started, strict=True)
                ]
            )
        self.results["workers"] = [{"setup": name, **r} for name, r in results.items()]

    def profile_phase(self) -> None:
        from . import profiling

        self.results["profile"] = {}
        for name in ("project", "direct"):
            with self.servers([(name, None)]) as (server,):
                self.o.log(f"profile: {name} under py-spy for {self.o.duration:g} s")
                self.results["profile"][name] = profiling.record_during(
                    server,
                    lambda s=server: run_load(self.spec(s), self.o.loader).as_dict(),
                    self.o.profile_dir,
                    name,
                    self.o.duration,
                )

    def availability_phase(self) -> None:
        import tempfile
        from pathlib import Path

        from payload_stats.postgres.migrations import migrate
        from payload_stats.postgres.pool import database_pool

        pool = database_pool(self.config, 1)
        try:
            migrate(pool)  # the table the lock is taken on
        finally:
            pool.closeall()
        self.o.log(
            f"availability: {self.o.probes} probes per figure, {self.o.slow_clients} "
            "slow and idle connections, stats locked"
        )
        with (
            self.servers([("project", None)]) as (server,),
            tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp,
        ):
            self.results["availability"] = availability.run(
                server.port,
                self.redis,
                replace(self.config, key_prefix=self.prefix),
                Path(tmp),
                slow_clients=self.o.slow_clients,
                count=self.o.probes,
                live_keys=self.o.live_keys,
                log=self.o.log,
            )
            self.results.setdefault("servers", {})["project"] = server.describe()

    def history_phase(self) -> None:
        from . import history

        self.results["history"] = [
            history.run(
                self.o.database_url,
                keys,
                self.o.history_days,
                self.o.history_reps,
                self.o.history_raw_reps,
                self.o.log,
            )
            for keys in self.o.history_keys
        ]

    def cleanup(self) -> None:
        sandbox.delete_prefix(self.redis, self.prefix)
        if self.schema:
            self.schema.drop()
        self.redis.close()


def run(options: Options) -> dict[str, Any]:
    """Run the chosen phases; the sandbox is removed whatever happens."""
    r = Run(options)
    only = set(options.only)
    try:
        if {*LOAD_PHASES, "half-load"} & only:
            r.load_phases()
        if "flush" in only:
            r.flush_phase()
        if "memory" in only:
            r.memory_phase()
        if "cluster" in only:
            r.cluster_phase()
        if "workers" in only:
            r.workers_phase()
        if "profile" in only:
            r.profile_phase()
        if "availability" in only:
            r.availability_phase()
        if "history" in only:
            r.history_phase()
    finally:
        r.cleanup()
    return r.results

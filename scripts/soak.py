"""Soak: the whole service under load and scheduler crashes, checked exactly.

    python scripts/soak.py --duration 60 [--processes 4] [--window 2] [--seed N]
                           [--redis-url URL] [--database-url URL] [--keep]

Runs ``payload-stats web`` (gunicorn) and ``payload-stats scheduler`` as
subprocesses with a short window, under their own Redis key prefix and their
own PostgreSQL schema (created here, dropped at the end unless ``--keep``).
Several load processes POST payloads over HTTP: random customers and
contents, sessions that start, go on and end, retries of accepted payloads
(same token and sessionDuration: must count once) and invalid payloads (must
get a 4xx and count nothing). Meanwhile the scheduler is SIGKILLed and
restarted at random, and some of its lives run with ``STATS_FAILPOINT`` set
(they die by themselves at that step of a flush). At the end, once the last
window has closed, a final ``payload-stats flush`` runs and ``stats`` is
compared with what the reference model (``tests/support/model.py``) makes of
the payloads answered 2xx, each given to it with the answer it got and its
reception time: between the start of its request and the end of the answer
(by the client's clock, the same host's as the server's), widened by
``--margin`` seconds either way.

- per (customer, content) over the whole run: cdn, p2p and payloads exactly,
  sessions within what the rules allow;
- per (window, customer, content): exactly where the model is certain; a
  row a payload near a window boundary may belong to must lie between the
  sum without it and the sum with it.

Every token is new in the soak. Prints a summary ending in ``mismatches: N``
and exits 1 on any mismatch (2 on a usage error).

``--hostile`` adds a process that attacks the exactness rules: batches that
push a counter past 2^63 - 1 (their rows must be isolated, exactly, in
``stats_quarantine``), batches of new keys that fill a Redis of its own
started with a small ``maxmemory`` (ingest answers 503 ``buffer_full`` until
the flush drains it), and another customer posting a victim's token and
sessionDuration (both must count). ``stats`` plus the isolated rows must
still match the model exactly.

Servers: ``--redis-url``/``--database-url``, or REDIS_URL/DATABASE_URL.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.support, from this checkout
    sys.path.insert(0, str(ROOT))

from payload_stats.buffer import snapshots  # noqa: E402
from payload_stats.config import Config  # noqa: E402
from tests.support import servers  # noqa: E402
from tests.support.model import Bounds, Key, Model, Row  # noqa: E402

CUSTOMERS = ["acme-tv", "globo", "cust:3", "ÉCOLE", "x y"]
CONTENTS = [f"live/channel-{i}" for i in range(12)] + ["vod/a:b", "日本語/ライブ", "c"]
INVALID_CHANGES: list[dict[str, Any]] = [
    {"cdn": -1},
    {"p2p": 10**12 + 1},
    {"sessionDuration": "30000"},
    {"timespan": 1.5},
    {"customer": ""},
    {"content": "bad\x00name"},
    {"cdn": True},
    {"token": "t" * 129},
    {"sessionDuration": -5},
    {"customer": None},
]
# Payloads sent near a window boundary use these pairs, so that the rows of
# the others hold (almost) only payloads whose window is certain.
EDGE_PAIRS = [("edge", f"boundary/{i}") for i in range(3)]
MISSING_FIELDS = ["token", "customer", "content", "timespan", "p2p", "cdn", "sessionDuration"]
GRACE_SECONDS = 0.5
HOSTILE_ROOM = 2**20  # bytes of maxmemory above what an empty Redis uses
FAILPOINT_EXIT = 17  # STATS_FAILPOINT: the process exits with this code at that step
# The scheduler's lives, in rounds of this list shuffled: None is a life ended
# by SIGKILL at a random instant; the others crash by themselves at a
# failpoint of their first flush (after_commit: the snapshot is in PostgreSQL
# and still in Redis, so the next flush must not count it again).
LIVES = [None, None, "after_freeze", "mid_batch", "after_commit"]


# --- the load processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    index: int
    seed: int
    port: int
    stop_at: float  # unix time
    window: int
    rate: float  # payloads per second, 0: as fast as the service answers
    margin: float
    run_id: str
    hostile: bool = False
    shards: int = 4


class Load:
    """One load process: its sessions, what it sent and what it expects."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.rng = random.Random(job.seed)
        self.length = job.window
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        # What the service must have done with every payload answered 2xx; the
        # tokens of one load process are its own, so the models add up.
        self.model = Model(job.window)
        self.last_after = 0.0
        self._tokens = 0

    def _count(self, body: dict[str, Any], t_before: float, t_after: float, counted: bool) -> None:
        """Give the model a payload answered 2xx (``counted``, or a duplicate) and
        received between ``t_before`` and ``t_after``; count what the rules forbid."""
        margin = self.job.margin
        answer = self.model.receive(
            t_before - margin, body, until=t_after + margin, counted=counted
        )
        if answer.contradicted and counted:
            self.counts["retries_counted"] += 1
            self.errors.append(f"a retry was counted again: {body}")
        elif answer.contradicted:
            self.counts["new_payload_duplicate"] += 1
            self.errors.append(f"a new payload was answered as a duplicate: {body}")
        if counted:
            self.counts["accepted"] += 1
            self.counts["boundary"] += answer.end is None
        self.last_after = max(self.last_after, t_after)

    def _post(self, body: Any, path: str = "/stats", timeout: float = 10) -> tuple[int, Any]:
        """One request; (status, JSON body). A list body is a batch of len(body) payloads.

        Raises OSError or http.client.HTTPException when there is no answer.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.job.port, timeout=timeout)
        try:
            conn.request(
                "POST",
                path,
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        self.counts["sent"] += len(body) if isinstance(body, list) else 1
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, None

    def send(self, body: dict[str, Any], *, retry_of_accepted: bool) -> bool:
        """POST a valid payload until it gets a definitive answer, as a device would.

        Returns True when it was answered 2xx. An attempt with no answer, or
        answered 503 (a Redis timeout may come after the write), may or may not
        have been counted; the next attempt's answer says which (a duplicate:
        the earlier one was), so the payload is counted once either way,
        somewhere between the first attempt's start and the last one's end.
        """
        t_before = time.time()
        for attempt in range(10):
            if attempt:
                time.sleep(self._pause(attempt))
            try:
                status, answer = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                self.counts["no_answer"] += 1
                self.errors.append(f"no answer: {exc!r}")
                continue
            t_after = time.time()
            if status == 503 and isinstance(answer, dict) and answer.get("error") == "buffer_full":
                # Nothing written: retry once the flush has made room.
                self.counts["buffer_full"] += 1
                self._full = True
                continue
            if status == 503:  # "retry shortly": Redis was slow or down; maybe it was counted
                self.counts["unavailable"] += 1
                self.errors.append(f"503 on a valid payload (retried): {answer}")
                continue
            if status >= 500:
                self.counts["server_errors"] += 1
                self.errors.append(f"{status} on a valid payload: {answer}")
                continue
            if status != 200 or not isinstance(answer, dict):
                self.counts["valid_rejected"] += 1
                self.errors.append(f"{status} on a valid payload {body}: {answer}")
                return False
            counted = answer.get("accepted") == 1 and answer.get("duplicates") == 0
            duplicate = answer.get("accepted") == 0 and answer.get("duplicates") == 1
            if not (counted or duplicate):
                self.counts["bad_answers"] += 1
                self.errors.append(f"unexpected answer {answer}")
                return False
            if duplicate:
                self.counts["duplicates"] += 1
            # A new payload answered as a duplicate after an attempt without an
            # answer (or a 503) was counted by that attempt.
            self._count(body, t_before, t_after, counted or (attempt > 0 and not retry_of_accepted))
            return True
        self.counts["unanswered"] += 1
        return False

    def _pause(self, attempt: int) -> float:
        """Seconds before attempt ``attempt``: longer while Redis was full (it frees
        room when the flush moves a closed window out)."""
        if getattr(self, "_full", False):
            self._full = False
            return self.length / 2
        return 0.2 * min(attempt, 5)

    def reject(self, body: dict[str, Any]) -> None:
        """POST an invalid payload: it must get a 4xx JSON error."""
        try:
            status, answer = self._post(body)
        except (OSError, http.client.HTTPException) as exc:
            self.counts["no_answer"] += 1
            self.errors.append(f"no answer to an invalid payload: {exc!r}")
            return
        if 400 <= status < 500 and isinstance(answer, dict) and "error" in answer:
            self.counts["rejected"] += 1
        else:
            self.counts["invalid_accepted" if status < 300 else "bad_rejections"] += 1
            self.errors.append(f"{status} {answer} on an invalid payload {body!r}")

    def token(self) -> str:
        self._tokens += 1
        return f"soak-{self.job.run_id}-{self.job.index}-{self._tokens}"

    def bytes_(self) -> int:
        r = self.rng.random()
        if r < 0.25:
            return 0
        if r < 0.27:
            return 10**12
        return self.rng.randrange(1, 10**8)

    def payload(self, token: str, pair: tuple[str, str], duration: int) -> dict[str, Any]:
        return {
            "token": token,
            "customer": pair[0],
            "content": pair[1],
            "timespan": self.rng.randrange(0, 60_000),
            "p2p": self.bytes_(),
            "cdn": self.bytes_(),
            "sessionDuration": duration,
        }

    def run(self) -> dict[str, Any]:
        rng, length = self.rng, self.length
        sessions: dict[bool, list[dict[str, Any]]] = {False: [], True: []}  # by near_edge
        spare_tokens: list[str] = []  # used in rejected payloads only: still new
        next_at = time.monotonic()
        while time.time() < self.job.stop_at:
            if self.job.rate:
                next_at += 1 / self.job.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            now = time.time()
            phase = now % length
            near_edge = phase < self.job.margin or length - phase < self.job.margin + 0.05
            # A session idle for half a window ends: the service must remember a
            # token for 2 windows, so the expected sessions never depend on forgetting.
            active = sessions[near_edge] = [
                s for s in sessions[near_edge] if s["left"] > 0 and now - s["at"] < length / 2
            ]
            roll = rng.random()
            if roll < 0.04:
                token = self.token()
                body = self.payload(token, (rng.choice(CUSTOMERS), rng.choice(CONTENTS)), 0)
                if rng.random() < 0.3:
                    del body[rng.choice(MISSING_FIELDS)]
                else:
                    body.update(rng.choice(INVALID_CHANGES))
                self.reject(body)
                spare_tokens.append(token)
                continue
            if roll < 0.12 and active:
                session = rng.choice(active)
                self.counts["retries"] += 1
                self.send(dict(session["last"]), retry_of_accepted=True)
                continue
            if active and (roll < 0.6 or len(active) >= 20):
                session = rng.choice(active)
                session["duration"] += rng.randrange(1, 3 * length * 1000 // 2)
            else:
                session = {
                    "token": spare_tokens.pop() if spare_tokens else self.token(),
                    "pair": (
                        rng.choice(EDGE_PAIRS)
                        if near_edge
                        else (rng.choice(CUSTOMERS), rng.choice(CONTENTS))
                    ),
                    "left": rng.randrange(1, 12),
                    "duration": rng.choice(
                        [0, 1, length * 500, length * 1000 - 1, length * 1000, 30_000, 3_600_000]
                    ),
                    "at": now,
                }
                active.append(session)
            body = self.payload(session["token"], session["pair"], session["duration"])
            session["left"] -= 1
            if self.send(body, retry_of_accepted=False):
                session.update(at=time.time(), last=body)
            else:
                session["left"] = 0  # no answer: the device gives up this session
        return {
            "counts": dict(self.counts),
            "errors": self.errors[:20],
            "bounds": self.model.bounds(),
            "last_after": self.last_after,
        }


class Hostile(Load):
    """The load of ``--hostile``: overflow attempts, a Redis filled to its limit,
    and another customer reusing a victim's token. Every payload it has
    answered 2xx goes to the model like any other."""

    OVERFLOW = ("hostile", "overflow")
    BATCH = 600  # two such batches of timespan 2^53 - 1 pass 2^63 in one counter

    def send_batch(self, items: list[dict[str, Any]]) -> bool:
        """POST a batch of new payloads until it is answered 2xx (all or nothing);
        False when it never was."""
        t_before = time.time()
        uncertain = False  # an attempt may have been written (no answer, or a timeout)
        for attempt in range(10):
            if attempt:
                time.sleep(self._pause(attempt))
            try:
                status, answer = self._post(items, "/stats/batch", timeout=30)
            except (OSError, http.client.HTTPException) as exc:
                self.counts["no_answer"] += 1
                self.errors.append(f"no answer to a batch: {exc!r}")
                uncertain = True
                continue
            if status == 503 and isinstance(answer, dict) and answer.get("error") == "buffer_full":
                self.counts["buffer_full"] += 1
                self._full = True
                continue
            if status == 503:
                self.counts["unavailable"] += 1
                uncertain = True
                continue
            t_after = time.time()
            n = len(items)
            if status != 200 or answer not in (
                {"accepted": n, "duplicates": 0},
                {"accepted": 0, "duplicates": n},
            ):
                self.counts["bad_answers"] += 1
                self.errors.append(f"{status} {answer} on a batch of {n} new payloads")
                return False
            if answer["duplicates"] and not uncertain:
                self.counts["new_payload_duplicate"] += 1
                self.errors.append("a batch of new payloads was answered as duplicates")
            for body in items:  # counted now, or by the attempt that got no answer
                self._count(body, t_before, t_after, True)
            self.counts["hostile_batches"] += 1
            return True
        if uncertain:
            self.counts["unanswered"] += len(items)
        else:  # refused every time by a full Redis: nothing written, nothing owed
            self.counts["hostile_refused"] += 1
        return False

    def tokens_in_shard(self, n: int, shard: int = 0) -> list[str]:
        """``n`` new tokens of one shard: their payloads share one counter hash."""
        found: list[str] = []
        while len(found) < n:
            token = self.token()
            if zlib.crc32(token.encode()) % self.job.shards == shard:
                found.append(token)
        return found

    def run(self) -> dict[str, Any]:
        rng, length = self.rng, self.length
        fills = 0
        first = True  # an overflow first, before Redis is ever full: it lands for sure
        while time.time() < self.job.stop_at:
            roll, first = (0.0 if first else rng.random()), False
            if roll < 0.3:
                # Overflow: two batches into one (window, shard, customer, content),
                # early in a window so both land in it.
                wait = length - time.time() % length
                if wait < length * 0.7:
                    time.sleep(wait + 0.05)
                for _ in range(2):
                    self.send_batch(
                        [
                            {
                                "token": token,
                                "customer": self.OVERFLOW[0],
                                "content": self.OVERFLOW[1],
                                "timespan": 2**53 - 1,
                                "p2p": 10**12,
                                "cdn": 10**12,
                                "sessionDuration": L_HOUR,
                            }
                            for token in self.tokens_in_shard(self.BATCH)
                        ]
                    )
            elif roll < 0.6:
                # Fill Redis with new counter hashes until it refuses (then the
                # batch is resent once the flush has made room).
                for _ in range(5):
                    fills += 1
                    full_before = self.counts["buffer_full"]
                    answered = self.send_batch(
                        [
                            {
                                "token": self.token(),
                                "customer": "hostile",
                                "content": f"fill/{fills}/{i}",
                                "timespan": 30_000,
                                "p2p": 1,
                                "cdn": 1,
                                "sessionDuration": 30_000,
                            }
                            for i in range(1000)
                        ]
                    )
                    if not answered or self.counts["buffer_full"] > full_before:
                        break  # full: let the flush drain it
            else:
                # Another customer posts the victim's token and sessionDuration:
                # both are counted, neither is a retry of the other.
                token = self.token()
                victim = {
                    "token": token,
                    "customer": "victim",
                    "content": "v",
                    "timespan": 30_000,
                    "p2p": rng.randrange(1, 10**6),
                    "cdn": rng.randrange(1, 10**6),
                    "sessionDuration": 1_000,
                }
                attacker = {**victim, "customer": "attacker", "cdn": 1, "p2p": 1}
                self.send(attacker, retry_of_accepted=False)
                if self.send(victim, retry_of_accepted=False):
                    self.counts["retries"] += 1  # the victim's own retry: counted once
                    self.send(dict(victim), retry_of_accepted=True)
        return {
            "counts": dict(self.counts),
            "errors": self.errors[:20],
            "bounds": self.model.bounds(),
            "last_after": self.last_after,
        }


L_HOUR = 3_600_000  # a long sessionDuration: no session, only bytes and watch time


def run_load(job: Job) -> dict[str, Any]:
    """Entry point of a load process."""
    return (Hostile(job) if job.hostile else Load(job)).run()


# --- the service ---------------------------------------------------------------------------------


class Service:
    """The web and scheduler subprocesses, their logs, and the run's sandbox."""

    def __init__(self, args: argparse.Namespace, run_id: str, workdir: Path) -> None:
        self.args = args
        self.prefix = f"soak-{run_id}"
        self.schema = f"soak_{run_id}"
        self.workdir = workdir
        self.port = servers.free_port()
        self.database_url = servers.with_search_path(args.database_url, self.schema)
        self.config = Config(
            redis_url=args.redis_url,
            database_url=self.database_url,
            key_prefix=self.prefix,
            window_seconds=args.window,
            flush_grace_seconds=GRACE_SECONDS,
            flush_lock_seconds=2,
            shards=args.shards,
        )
        self.env = servers.cli_environment(
            self.config,
            STATS_FLUSH_INTERVAL_SECONDS="0.5",
            STATS_RETENTION_DAYS="0",
            STATS_LOG_FORMAT="text",
        )
        self.web: subprocess.Popen | None = None
        self.scheduler: subprocess.Popen | None = None
        self.failpoint: str | None = None
        self.kills = 0
        self.kills_mid_flush = 0
        self.failpoint_exits: Counter[str] = Counter()

    def create_schema(self) -> None:
        conn = psycopg2.connect(self.args.database_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE SCHEMA "{self.schema}"')
        finally:
            conn.close()

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return servers.run_cli(self.env, *args, timeout=timeout)

    def start_web(self) -> None:
        self.web = servers.start_cli(
            {**self.env, "STATS_LOG_LEVEL": "WARNING"},
            "web",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.args.workers),
            log=self.workdir / "web.log",
            new_session=True,  # gunicorn and its workers: stopped as one group
        )
        try:
            servers.wait_for_http(f"http://127.0.0.1:{self.port}/healthz", self.web, timeout=60)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"web did not start ({exc}); see {self.workdir}") from None

    def start_scheduler(self, failpoint: str | None = None) -> None:
        """Start a scheduler; with ``failpoint``, it exits 17 at that step of a flush."""
        self.failpoint = failpoint
        env = {**self.env, "STATS_FAILPOINT": failpoint} if failpoint else self.env
        self.scheduler = servers.start_cli(env, "scheduler", log=self.workdir / "scheduler.log")

    def snapshots(self) -> set[str]:
        """The ids of the pending snapshots of every shard."""
        redis = Redis.from_url(self.args.redis_url)
        try:
            return {snap.id for snap in snapshots.pending_snapshots(redis, self.config)}
        finally:
            redis.close()

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler; count the kills that left a snapshot of its own.

        A scheduler that already died at its failpoint (exit 17) is counted as such.
        """
        assert self.scheduler is not None
        code = self.scheduler.poll()
        if code == FAILPOINT_EXIT and self.failpoint:
            self.failpoint_exits[self.failpoint] += 1
            return
        if code is not None:
            raise RuntimeError(f"the scheduler exited by itself ({code}); see {self.workdir}")
        before = self.snapshots()
        self.scheduler.kill()
        self.scheduler.wait(30)
        self.kills += 1
        self.kills_mid_flush += bool(self.snapshots() - before)

    def stop(self) -> None:
        """SIGTERM both processes (a graceful stop); SIGKILL what is left after 30 s."""
        for proc in (self.scheduler, self.web):
            if proc is not None:
                servers.stop(proc, timeout=30)

    def stats(self) -> dict[Key, Row]:
        conn = psycopg2.connect(self.database_url)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT extract(epoch FROM time)::bigint, customer, content, "
                    "cdn, p2p, sessions, payloads, watch_ms FROM stats"
                )
                rows = cur.fetchall()
        finally:
            conn.close()
        return {(t, cu, co): Row(*values) for t, cu, co, *values in rows}

    def isolated(self) -> dict[Key, Row]:
        """The rows the flush isolated (unresolved), summed per (window, customer, content)."""
        conn = psycopg2.connect(self.database_url)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT extract(epoch FROM time)::bigint, customer, content, "
                    "cdn, p2p, sessions, payloads, watch_ms FROM stats_quarantine "
                    "WHERE resolved_at IS NULL"
                )
                rows = cur.fetchall()
        finally:
            conn.close()
        found: dict[Key, Row] = {}
        for t, cu, co, *values in rows:
            row = Row(*(int(v) for v in values))
            found[(t, cu, co)] = found.get((t, cu, co), Row()) + row
        return found

    def leftover_keys(self) -> list[str]:
        """Redis keys still holding buffered data: live counters or snapshots."""
        redis = Redis.from_url(self.args.redis_url)
        try:
            names = [k.decode() for k in redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
        finally:
            redis.close()
        kept = (":lock:flush", ":flush:stats", ":deployment")
        return sorted({n for n in names if ":t:" not in n and not n.endswith(kept)})

    def clean(self) -> None:
        redis = Redis.from_url(self.args.redis_url)
        try:
            batch = []
            for name in redis.scan_iter(match=f"{self.prefix}:*", count=1000):
                batch.append(name)
                if len(batch) == 500:
                    redis.unlink(*batch)
                    batch = []
            if batch:
                redis.unlink(*batch)
        finally:
            redis.close()
        conn = psycopg2.connect(self.args.database_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            conn.close()


# --- the check -----------------------------------------------------------------------------------


def compare(results: list[dict[str, Any]], rows: dict[Key, Row]) -> tuple[list[str], Bounds]:
    """Mismatches between ``stats`` and the model's bounds, and the bounds."""
    bounds = Bounds.sum(result["bounds"] for result in results)
    return bounds.check(rows), bounds


# --- main ----------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load [60]")
    p.add_argument("--processes", type=int, default=4, help="load processes [4]")
    p.add_argument("--window", type=int, default=2, help="STATS_WINDOW_SECONDS [2]")
    p.add_argument("--seed", type=int, help="random seed [random, printed]")
    p.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL"), help="Redis to use [REDIS_URL]"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL to use [DATABASE_URL]",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the Redis keys, the PostgreSQL schema and the logs",
    )
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers [2]")
    p.add_argument("--shards", type=int, default=4, help="STATS_SHARDS [4]")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="payloads per second per load process; 0: as fast as answered [0]",
    )
    p.add_argument(
        "--kill-every", type=float, default=3.0, help="mean seconds between scheduler SIGKILLs [3]"
    )
    p.add_argument(
        "--hostile",
        action="store_true",
        help="add a process that overflows counters, fills Redis and reuses tokens "
        "(Redis of its own; --redis-url unused)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="seconds from a window boundary within which a payload's window is ambiguous [0.1]",
    )
    args = p.parse_args(argv)
    if not (args.redis_url or args.hostile) or not args.database_url:
        p.error("set --redis-url and --database-url (or REDIS_URL and DATABASE_URL)")
    if args.duration <= 0 or args.processes < 1 or args.window < 1:
        p.error("--duration, --processes and --window must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    run_id = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    service = Service(args, run_id, workdir)
    print(
        f"soak: seed {seed}, {args.duration:g} s, {args.processes} load processes, "
        f"window {args.window} s, prefix {service.prefix}, schema {service.schema}, "
        f"logs {workdir}",
        flush=True,
    )
    problems: list[str] = []
    ok = False
    own_redis = None
    if args.hostile:
        # A Redis of the soak's own, with little room: the hostile process fills it.
        own_redis = servers.RedisServer(workdir / "redis", appendonly=False)
        # No per-command latency histograms: they take memory as commands first run.
        own_redis.options += ["--latency-tracking", "no"]
        own_redis.start()
        used = Redis.from_url(own_redis.url).info("memory")["used_memory"]
        Redis.from_url(own_redis.url).config_set("maxmemory", used + HOSTILE_ROOM)
        args.redis_url = own_redis.url
        service = Service(args, run_id, workdir)
    service.create_schema()
    try:
        done = service.run("init-db")
        if done.returncode != 0:
            raise RuntimeError(f"init-db failed: {done.stderr.strip()}")
        service.start_web()

        stop_at = time.time() + args.duration
        jobs = [
            Job(
                i,
                rng.randrange(2**32),
                service.port,
                stop_at,
                args.window,
                args.rate,
                args.margin,
                run_id,
                hostile=args.hostile and i == args.processes,
                shards=args.shards,
            )
            for i in range(args.processes + args.hostile)
        ]
        context = multiprocessing.get_context("spawn")
        with context.Pool(len(jobs)) as pool:
            pending = pool.map_async(run_load, jobs)
            # While the load runs, the scheduler is killed at random instants, or
            # dies at a failpoint of a flush (then it is waited for, up to 30 s).
            # The first round crashes at every failpoint, after_commit first, before
            # any SIGKILL, so that even a short run goes through each of them.
            lives = sorted(
                rng.sample(LIVES, len(LIVES)),
                key=lambda life: (life is not None, life == "after_commit"),
            )
            while not pending.ready():
                if not lives:
                    lives = rng.sample(LIVES, len(LIVES))
                service.start_scheduler(lives.pop())
                if service.failpoint:
                    started = time.monotonic()
                    while (
                        service.scheduler.poll() is None
                        and not pending.ready()
                        and time.monotonic() - started < 30
                    ):
                        pending.wait(0.1)
                else:
                    pending.wait(rng.expovariate(1 / args.kill_every))
                service.kill_scheduler()
            results = pending.get()
        service.stop()

        last = max(r["last_after"] for r in results)
        end = (math.floor(last / args.window) + 1) * args.window
        time.sleep(max(0.0, end + GRACE_SECONDS + 0.2 - time.time()))
        done = service.run("flush")
        # 3: rows isolated by the flush wait for an operator, as --hostile wants.
        if done.returncode not in ((0, 3) if args.hostile else (0,)):
            raise RuntimeError(f"the final flush failed: {done.stderr.strip()}")

        rows = service.stats()
        isolated = service.isolated()
        for key, row in isolated.items():  # counted once: in stats or isolated
            rows[key] = rows.get(key, Row()) + row
        problems, bounds = compare(results, rows)
        counts: Counter[str] = Counter()
        for result in results:
            counts.update(result["counts"])
        request_errors = [e for result in results for e in result["errors"]]
        if args.hostile and not isolated:
            problems.append("--hostile: no row was isolated: the overflow never happened")
        if args.hostile and not counts["buffer_full"]:
            problems.append("--hostile: Redis never refused a request: it never filled")
        leftovers = service.leftover_keys()
        if leftovers:
            problems.append(f"{len(leftovers)} keys still buffered in Redis: {leftovers[:5]}")
        failed_requests = sum(
            counts[name]
            for name in (
                "server_errors",
                "unanswered",
                "valid_rejected",
                "bad_answers",
                "retries_counted",
                "new_payload_duplicate",
                "invalid_accepted",
                "bad_rejections",
            )
        )
        mismatches = len(problems) + failed_requests

        for line in request_errors[:10]:
            print(f"  request: {line}")
        for line in problems[:30]:
            print(f"  {line}")
        print(f"payloads sent: {counts['sent']} (requests)")
        print(f"accepted: {counts['accepted']} (counted once each)")
        print(f"duplicates: {counts['duplicates']} (answers to {counts['retries']} retries)")
        print(f"rejected: {counts['rejected']} (invalid payloads, 4xx)")
        print(f"boundary payloads: {counts['boundary']} (window checked within bounds)")
        print(
            f"failed requests: {failed_requests} (5xx: {counts['server_errors']}, "
            f"retries counted: {counts['retries_counted']}, "
            f"invalid accepted: {counts['invalid_accepted']}, "
            f"unanswered: {counts['unanswered']}); retried after a 503: "
            f"{counts['unavailable']}, after no answer: {counts['no_answer']}"
        )
        if args.hostile:
            print(
                f"hostile: {counts['hostile_batches']} batches answered, "
                f"{len(isolated)} rows isolated, {counts['buffer_full']} answers buffer_full"
            )
        print(
            f"scheduler kills: {service.kills} ({service.kills_mid_flush} left a snapshot), "
            f"failpoint exits: {sum(service.failpoint_exits.values())} "
            f"{dict(sorted(service.failpoint_exits.items()))}"
        )
        print(
            f"rows: {len(rows)} in {len({k[0] for k in rows})} windows; "
            f"{bounds.exact()} (window, customer, content) checked exactly, "
            f"{len(bounds.rows) - bounds.exact()} within bounds; {len(bounds.totals)} "
            f"(customer, content) totals checked"
        )
        print(f"mismatches: {mismatches}", flush=True)
        ok = mismatches == 0
    finally:
        service.stop()
        if not args.keep:
            service.clean()
        if own_redis is not None:
            own_redis.stop()
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
        if not ok:
            print(f"soak: logs kept in {workdir}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Faults around the service while payloads keep coming (docs/exactly-once.md).

What ``test_flush.py`` and ``test_cli.py`` do not cover already:

- Redis stopped (cleanly or killed) and started again under a running app:
  ``POST /stats`` answers 503 JSON quickly while it is down, 200 again on its
  own once it is back, and nothing accepted before the restart is lost (a
  test-owned ``redis-server`` with an append-only file, fsync always).
- Three ``scheduler`` processes and repeated ``flush`` commands at once, on
  the real clock, while payloads arrive across several 1 s windows.
- A ``scheduler`` killed (SIGKILL) again and again, often in the middle of a
  flush, while payloads arrive.

The app under test gets a clock that reads ``time.time()`` and remembers the
reading, so the test knows the exact reception time (hence the window) of
every payload it sent, feeds it to the reference model
(``tests/support/model.py``) with the answer the service gave, and checks
``stats`` exactly against the model's rows: no tolerance at window boundaries.
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from payload_stats.buffer import snapshots
from payload_stats.buffer.keys import Keys
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.postgres.pool import connection
from payload_stats.web.app import create_app
from tests.conftest import START, payload
from tests.support.drive import Crash, crash_at, flush_time
from tests.support.model import Answer, Model
from tests.support.servers import (
    RedisServer,
    cli_environment,
    redis_server_binary,
    run_cli,
    sleep_until,
    start_cli,
    wait_for,
)
from tests.support.store import assert_drained, stats_table

REDIS_SERVER = redis_server_binary()


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path):
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary (install Redis or the embedded extra)")
    with RedisServer(tmp_path / "redis") as server:
        yield server


def assert_nothing_buffered(redis: Redis, config: Config) -> None:
    """Everything accepted is in PostgreSQL; the lock (a killed flusher's expires by
    itself) and the scheduler's flush figures may remain."""
    assert_drained(redis, config, allow=("lock", "figures"))


def post(client, body: Any):
    resp = client.post("/stats", json=body)
    return resp.status_code, resp.get_json(silent=True), resp


# --- Redis stopped and started again ------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_redis_restart_loses_nothing_and_the_app_recovers_by_itself(
    own_redis, config, pool, clock, stop
):
    """SIGTERM is a clean shutdown; SIGKILL a crash, which ``appendfsync always`` survives."""
    cfg = replace(config, redis_url=own_redis.url)
    app = create_app(cfg, clock=clock)
    client = app.test_client()
    redis = Redis.from_url(own_redis.url)
    model = Model.of(cfg)
    length = cfg.window_seconds
    k0 = math.floor(START / length)
    end0, end1 = (k0 + 1) * length, (k0 + 2) * length
    last: dict[str, dict[str, Any]] = {}  # the latest payload of each token

    def accept(body: dict[str, Any]) -> Answer:
        status, answer, resp = post(client, body)
        assert status == 200, resp.get_data()[:300]
        expected = model.receive(clock.now, body)
        assert answer == {"accepted": int(expected.counted), "duplicates": int(expected.duplicate)}
        last[body["token"]] = body
        return expected

    try:
        # Window k0: a few sessions; window k0 + 1: more, some continuing.
        for i in range(12):
            accept(
                payload(
                    token=f"t{i}",
                    customer=f"c{i % 3}",
                    content=f"m{i % 4}",
                    cdn=1000 * i,
                    p2p=7 * i,
                    sessionDuration=[0, 500, 400_000][i % 3],
                )
            )
        clock.now = START + length
        for i in range(6, 18):
            accept(
                payload(
                    token=f"t{i}",
                    customer=f"c{i % 3}",
                    content=f"m{i % 4}",
                    cdn=i,
                    p2p=0 if i % 2 else 3,
                    sessionDuration=31_200 + i,
                )
            )
        # A flusher froze window k0 and died before writing it: a snapshot waits in Redis.
        clock.now = flush_time(end0, cfg) + 1
        with pytest.raises(Crash):
            flush_once(redis, pool, cfg, clock, failpoint=crash_at("after_freeze"))
        assert snapshots.pending_snapshots(redis, cfg)
        redis.close()

        own_redis.stop(stop)
        for i in range(3):  # refused, then refused again on a fresh connection
            started = time.monotonic()
            status, answer, resp = post(client, payload(token=f"down-{i}", cdn=99))
            elapsed = time.monotonic() - started
            assert status == 503, resp.get_data()[:300]
            assert answer is not None and answer["error"] == "unavailable", answer
            assert isinstance(answer.get("message"), str), answer
            assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
            assert elapsed < 3.0, f"503 took {elapsed:.2f} s with Redis down"
        # Validation does not need Redis: a bad payload is still a 400.
        assert post(client, payload(cdn=-1))[0] == 400

        own_redis.start()  # same port, same directory: the append-only file is replayed
        # The running app recovers on its own: its very next request is accepted.
        accept(payload(token="back-1", customer="c0", content="m0", cdn=5, p2p=5))
        # Token memory survived: a retry is still a retry; a zero-byte payload starts
        # the session of a token seen but never started (t8), and nothing for a token
        # whose session started before the restart (t9).
        assert accept(dict(last["t7"])).duplicate
        t8 = payload(token="t8", customer="c2", content="m0", cdn=0, p2p=0, sessionDuration=600)
        assert accept(t8).starts is True
        t9 = payload(token="t9", customer="c0", content="m1", cdn=0, p2p=0, sessionDuration=700)
        assert accept(t9).starts is False
        for i in range(20, 30):
            accept(
                payload(
                    token=f"t{i}",
                    customer=f"c{i % 3}",
                    content=f"m{i % 4}",
                    cdn=i * 11,
                    p2p=i,
                    sessionDuration=i * 10,
                )
            )

        redis = Redis.from_url(own_redis.url)
        clock.now = flush_time(end1, cfg)
        flush_once(redis, pool, cfg, clock)
        assert stats_table(pool) == model.rows()
        assert model.ends() == [end0, end1]
        assert_nothing_buffered(redis, cfg)
    except BaseException:
        print(own_redis.log())
        raise
    finally:
        redis.close()


# --- schedulers and flush commands on the real clock ---------------------------------------------


class TaggingClock:
    """The app's clock: ``time.time()``, remembering its last reading.

    The app reads its clock once per accepted request; with one posting
    thread, the reading after a request is that request's reception time.
    """

    def __init__(self) -> None:
        self.last: float | None = None

    def __call__(self) -> float:
        self.last = time.time()
        return self.last


INVALID = [
    {"cdn": -1},
    {"p2p": 10**12 + 1},
    {"sessionDuration": "30000"},
    {"timespan": 1.5},
    {"customer": ""},
    {"content": "bad\x00name"},
    {"cdn": True},
    {"token": None},
]


class Poster(threading.Thread):
    """Posts payloads through the Flask test client for ``seconds``; the model takes
    each answer.

    Sessions of 1 to 6 payloads with growing sessionDuration (some with zero
    bytes, some starting no session); retries of accepted payloads, which
    must be answered as duplicates and count nothing; invalid payloads, which
    must get 400 and change nothing (their token later starts a session for
    real). A session idle for half a window ends, so whether the service forgot
    a token (it may after 2 windows) never matters: the rows stay certain.
    """

    def __init__(self, config: Config, seconds: float, seed: int, contents: int) -> None:
        super().__init__(daemon=True)
        self.clock = TaggingClock()
        self.client = create_app(config, clock=self.clock).test_client()
        self.model = Model.of(config)
        self.length = config.window_seconds
        self.seconds = seconds
        self.stop = threading.Event()  # ends the run before ``seconds``
        self.rng = random.Random(seed)
        self.pairs = [(f"cust-{i % 3}", f"live/{i}") for i in range(contents)]
        self.pairs += [("a:b", "c"), ("a", "b:c")]
        self.counts: Counter[str] = Counter()
        self.last_tag: float | None = None
        self.error: BaseException | None = None
        self._tokens = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def _token(self) -> str:
        self._tokens += 1
        return f"tok-{self._tokens}"

    def _bytes(self) -> int:
        return self.rng.choice([0, self.rng.randrange(1, 10**9), self.rng.randrange(1, 10**12)])

    def _send(self, body: dict[str, Any], *, new: bool = True) -> tuple[int, Any]:
        """POST ``body``; (status, JSON answer). A payload answered 2xx goes to the model,
        which must agree: a ``new`` payload counts, a retry of one does not.

        A 503 (Redis slow: a shared server may stall) is retried, as a device
        would. It may come after the write: then the retry of a ``new``
        payload is answered as a duplicate, and it was received at a 503's time.
        """
        unavailable: list[float] = []
        for _ in range(5):
            self.clock.last = None
            resp = self.client.post("/stats", json=body)
            answer = resp.get_json(silent=True)
            if resp.status_code != 503:
                break
            self.counts["unavailable"] += 1
            assert self.clock.last is not None
            unavailable.append(self.clock.last)
            time.sleep(0.2)
        if resp.status_code != 200:
            return resp.status_code, answer
        received = (self.clock.last, self.clock.last)
        counted = answer == {"accepted": 1, "duplicates": 0}
        if new and unavailable and not counted:  # counted by one of the 503'd attempts
            windows = {math.floor(t / self.length) for t in unavailable}
            assert len(windows) == 1, "a retried payload's window is ambiguous"
            received, counted = (unavailable[0], unavailable[-1]), True
        assert received[0] is not None
        expected = self.model.receive(received[0], body, until=received[1], counted=counted)
        assert expected.counted is new and not expected.contradicted, (body, answer)
        self.last_tag = max(self.last_tag or 0.0, received[1])
        return resp.status_code, answer

    def _run(self) -> None:
        rng = self.rng
        active: list[dict[str, Any]] = []
        rejected_tokens: list[str] = []
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            now = time.time()
            active = [s for s in active if s["left"] > 0 and now - s["at"] < self.length / 2]
            roll = rng.random()
            if roll < 0.05:
                token = self._token()
                body = {**payload(token=token), **rng.choice(INVALID)}
                status, answer = self._send(body)
                assert status == 400 and answer["error"] == "invalid_payload", (body, answer)
                rejected_tokens.append(token)
                self.counts["rejected"] += 1
                continue
            if roll < 0.12 and active:
                session = rng.choice(active)
                status, answer = self._send(dict(session["last"]), new=False)
                assert status == 200, (session["last"], answer)
                self.counts["duplicates"] += 1
                continue
            if active and (roll < 0.6 or len(active) >= 12):
                session = rng.choice(active)
                session["duration"] += rng.randrange(1, 800)
                body = payload(
                    token=session["token"],
                    customer=session["pair"][0],
                    content=session["pair"][1],
                    cdn=self._bytes(),
                    p2p=self._bytes(),
                    sessionDuration=session["duration"],
                )
            else:
                token = rejected_tokens.pop() if rejected_tokens else self._token()
                pair = rng.choice(self.pairs)
                session = {
                    "token": token,
                    "pair": pair,
                    "left": rng.randrange(1, 7),
                    "duration": rng.choice([0, 300, 999, 1000, 45_000]),
                }
                active.append(session)
                body = payload(
                    token=token,
                    customer=pair[0],
                    content=pair[1],
                    cdn=self._bytes(),
                    p2p=self._bytes(),
                    sessionDuration=session["duration"],
                )
            status, answer = self._send(body)
            assert status == 200, (body, answer)
            session.update(left=session["left"] - 1, at=self.last_tag, last=body)
            self.counts["accepted"] += 1

    def finish(self, timeout: float = 60) -> None:
        """End the run (or wait for its end); re-raise what went wrong in it."""
        self.stop.set()
        self.join(timeout)
        assert not self.is_alive(), "the poster did not finish"
        if self.error is not None:
            raise self.error
        assert self.counts["accepted"] > 100, self.counts
        assert len(self.model.ends()) >= 3, "the payloads did not span several windows"


def unexpected_flush_failures(logs) -> list[str]:
    """``flush_failed`` lines of scheduler logs, but for server timeouts.

    Concurrent flushers must not fail each other (a deadlock, a conflict); a
    shared server that stalls past the 1 s timeout is not their doing.
    """
    found = []
    for log in logs:
        for line in log.read_text().splitlines():
            if '"flush_failed"' not in line:
                continue
            reason = json.loads(line).get("reason", "").lower()
            if "timeout" not in reason and "timed out" not in reason:
                found.append(line)
    return found


def start_scheduler(env: dict[str, str], log: Path) -> subprocess.Popen:
    return start_cli(env, "scheduler", log=log)


def show_logs(tmp_path: Path) -> None:
    for log in sorted(tmp_path.glob("*.log")):
        text = log.read_text(errors="replace")
        print(f"--- {log.name} (last 4000 characters)\n{text[-4000:]}")


def close_last_window(poster: Poster, config: Config) -> None:
    """Wait until the window of the last accepted payload may be flushed."""
    assert poster.last_tag is not None
    end = (math.floor(poster.last_tag / config.window_seconds) + 1) * config.window_seconds
    sleep_until(end + config.flush_grace_seconds + 0.05)


def short_windows(config: Config, **changes: Any) -> Config:
    return replace(
        config,
        window_seconds=1,
        flush_grace_seconds=0.2,
        flush_interval_seconds=0.2,
        flush_lock_seconds=1,
        **changes,
    )


def scheduler_env(config: Config) -> dict[str, str]:
    return cli_environment(
        config,
        STATS_FLUSH_INTERVAL_SECONDS=str(config.flush_interval_seconds),
        STATS_LOG_LEVEL="INFO",
        STATS_RETENTION_DAYS="0",
    )


def test_three_schedulers_and_flush_commands_while_payloads_arrive(config, pool, redis, tmp_path):
    cfg = short_windows(config)
    env = scheduler_env(cfg)
    seed = random.randrange(2**32)
    schedulers = [start_scheduler(env, tmp_path / f"scheduler-{i}.log") for i in range(3)]
    try:
        poster = Poster(cfg, seconds=6, seed=seed, contents=8)
        poster.start()
        flushes = []
        while poster.is_alive():
            done = run_cli(env, "flush", timeout=60)
            assert done.returncode == 0, done.stderr
            flushes.append(done.stdout.splitlines()[0])
            assert all(p.poll() is None for p in schedulers), "a scheduler died"
        poster.finish()

        # The schedulers were flushing too, not just the commands.
        close_last_window(poster, cfg)
        wait_for(
            lambda: int(redis.hget(Keys(cfg.key_prefix).flush_stats(), "rows") or 0) > 0,
            30,
            "the schedulers to write rows",
        )

        for proc in schedulers:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(30) for proc in schedulers] == [0, 0, 0]

        done = run_cli(env, "flush", timeout=60)
        assert done.returncode == 0, done.stderr
        assert stats_table(pool) == poster.model.rows(), f"seed {seed}, {poster.counts}"
        assert_nothing_buffered(redis, cfg)
        assert unexpected_flush_failures(tmp_path.glob("scheduler-*.log")) == [], (
            "a concurrent flush failed"
        )
        print(
            f"seed {seed}: {dict(poster.counts)}, {len(poster.model.ends())} windows, "
            f"{len(flushes)} flush commands"
        )
    except BaseException:
        show_logs(tmp_path)
        raise
    finally:
        for proc in schedulers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def pending_ids(redis: Redis, config: Config) -> set[str]:
    return {s.id for s in snapshots.pending_snapshots(redis, config)}


def committed(pool, ids: set[str]) -> set[str]:
    """Those of ``ids`` the PostgreSQL ledger holds: written, maybe not yet released."""
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT snapshot_id FROM flush_ledger WHERE snapshot_id = ANY(%s)", (list(ids),)
        )
        found = {row[0] for row in cur.fetchall()}
        conn.rollback()
    return found


def wait_for_flush_step(
    redis: Redis, pool, config: Config, before: set[str], step: str, timeout: float
) -> None:
    """Until a flush other than those of ``before`` has frozen a snapshot
    (``step="frozen"``) or committed one still in Redis (``"committed"``),
    or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = pending_ids(redis, config) - before
        if new and (step == "frozen" or committed(pool, new)):
            return
        time.sleep(0.002)


def test_scheduler_killed_at_random_instants_while_payloads_arrive(config, pool, redis, tmp_path):
    # Batches of one counter hash: a flush takes many round trips, so kills land inside.
    cfg = short_windows(config, flush_batch_size=1)
    env = scheduler_env(cfg)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    log = tmp_path / "scheduler.log"
    poster = Poster(cfg, seconds=60, seed=seed, contents=40)
    poster.start()
    started = time.monotonic()
    kills: Counter[str] = Counter()
    landed: Counter[str] = Counter()  # kills that left a snapshot: frozen, or committed too
    # Each life of the scheduler is killed once it has frozen a snapshot (mid-flush),
    # once it has committed one but not yet released it (the ledger's case), or at
    # any instant; in rounds of the three, the first round in that order.
    modes = ["any", "committed", "frozen"]
    proc: subprocess.Popen | None = None
    try:
        # At least 6 s; more (up to 30 s) until both kinds of kill have landed.
        while time.monotonic() - started < 6 or (
            not (landed["frozen"] and landed["committed"]) and time.monotonic() - started < 30
        ):
            assert poster.is_alive(), "the poster stopped"
            if not modes:
                modes = rng.sample(["frozen", "committed", "any"], 3)
            mode = modes.pop()
            before = pending_ids(redis, cfg)
            proc = start_scheduler(env, log)
            if mode == "any":
                time.sleep(rng.uniform(0.3, 1.5))
            else:
                wait_for_flush_step(redis, pool, cfg, before, mode, timeout=5)
                if mode == "frozen":
                    time.sleep(rng.uniform(0, 0.02))
            assert proc.poll() is None, f"the scheduler exited with {proc.returncode}"
            proc.kill()
            proc.wait(10)
            kills[mode] += 1
            left = pending_ids(redis, cfg) - before
            if left:
                landed["frozen"] += 1
                landed["committed"] += bool(committed(pool, left))
        poster.finish()

        close_last_window(poster, cfg)
        done = run_cli(env, "flush", timeout=60)
        assert done.returncode == 0, done.stderr
        assert stats_table(pool) == poster.model.rows(), (
            f"seed {seed}, kills {dict(kills)}, landed {dict(landed)}, {poster.counts}"
        )
        assert_nothing_buffered(redis, cfg)
        assert landed["frozen"], f"no kill landed inside a flush (seed {seed}, {kills})"
        assert landed["committed"], f"no kill landed after a commit (seed {seed}, {kills})"
        print(
            f"seed {seed}: {dict(poster.counts)}, {len(poster.model.ends())} windows, "
            f"kills {dict(kills)}, left a snapshot {dict(landed)}"
        )
    except BaseException:
        show_logs(tmp_path)
        raise
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        poster.stop.set()
        poster.join(60)

"""Reads never starve writes, and nothing waits on PostgreSQL for ever.

A lock held on ``stats`` (ACCESS EXCLUSIVE, in another connection, as a long
migration or a VACUUM FULL would) must not slow ingest, which never touches
PostgreSQL; reads must answer 503 within the lock timeout instead of holding
threads; the flush and the retention must give up within their lock timeout,
free the flusher's Redis lock, and keep every payload in Redis for the next run.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
from redis import Redis

from payload_stats.buffer import counters, ingest, keys
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config
from payload_stats.flush.lock import flush_with_lock
from payload_stats.flush.scheduler import FlushJob, RetentionJob
from payload_stats.postgres.pool import connection, flush_pool, web_pool
from payload_stats.web.app import create_app
from tests.conftest import START, payload, stats_rows, write_rows
from tests.support.servers import (
    UNREACHABLE_DATABASE_URL,
    cli_environment,
    free_port,
    start_cli,
    stop,
    wait_for_port,
)

one_shard = pytest.mark.parametrize("shards", [1], ids=["1shard"])
NOW = datetime.fromtimestamp(START, tz=timezone.utc)


def a_row(pool, at: datetime = NOW) -> None:
    """One stats row (and so its day partition): with none, a read or the
    retention has no partition of ``stats`` to touch, locked or not."""
    write_rows(pool, [(at, "acme", "movie-1", 1, 1, 1, 1)])


@contextmanager
def locked_stats(database_url: str) -> Iterator[None]:
    """``stats`` locked ACCESS EXCLUSIVE by another connection until the block ends."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE stats IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        conn.rollback()
        conn.close()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * pct // 100) - 1)] if ordered else 0.0


# --- the pools -----------------------------------------------------------------------


@one_shard
def test_web_and_flush_connections_carry_their_timeouts(config, pool):
    config = replace(config, pg_statement_timeout_ms=2500, pg_lock_timeout_ms=700)
    for make, expected in (
        (lambda: web_pool(config, 1), ("2500ms", "700ms")),
        (lambda: flush_pool(config, 1), ("12s", "700ms")),
        (lambda: flush_pool(replace(config, flush_lock_seconds=1.5), 1), ("300ms", "300ms")),
    ):
        p = make()
        try:
            with connection(p) as conn, conn.cursor() as cur:
                cur.execute("SHOW statement_timeout")
                statement = cur.fetchone()[0]
                cur.execute("SHOW lock_timeout")
                lock = cur.fetchone()[0]
                # The options of the URL (the test schema's search_path) are kept.
                cur.execute("SELECT count(*) FROM stats")
                conn.rollback()
        finally:
            p.closeall()
        assert (statement, lock) == expected


# --- the web app, in process -------------------------------------------------------------


@one_shard
def test_history_answers_503_within_the_lock_timeout(config, pool, clock, database_url):
    a_row(pool)
    app = create_app(replace(config, pg_lock_timeout_ms=300), clock=clock)
    client = app.test_client()
    assert client.get("/stats").status_code == 200
    with locked_stats(config.database_url):
        began = time.monotonic()
        response = client.get("/stats")
        took = time.monotonic() - began
        # Ingest goes on: it never touches PostgreSQL.
        assert client.post("/stats", json=payload()).status_code == 200
    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"
    assert response.headers["Retry-After"]
    assert 0.25 < took < 3
    assert client.get("/stats").status_code == 200


@one_shard
def test_a_slow_statement_is_cancelled_and_answered_503(config, pool, clock, monkeypatch):
    from payload_stats.query import history

    a_row(pool)
    app = create_app(replace(config, pg_statement_timeout_ms=200), clock=clock)
    real_slice = history._raw_slice

    def slow_slice(conn, *args):
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(5)")  # a statement of the read, slow
        return real_slice(conn, *args)

    monkeypatch.setattr(history, "_raw_slice", slow_slice)
    began = time.monotonic()
    response = app.test_client().get("/stats")
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"] == "unavailable"
    assert time.monotonic() - began < 3


@one_shard
def test_reads_past_the_slots_answer_503_at_once(config, pool, clock):
    app = create_app(replace(config, web_threads=4, read_concurrency=1), clock=clock)
    client = app.test_client()
    slots = app.extensions["payload_stats"].read_slots
    assert slots.acquire(blocking=False)  # a read in progress in another thread
    try:
        for path in ("/stats", "/stats/live"):
            began = time.monotonic()
            response = client.get(path)
            assert time.monotonic() - began < 0.5
            assert response.status_code == 503
            assert response.get_json()["error"] == "unavailable"
            assert response.headers["Retry-After"] == "1"
        assert client.post("/stats", json=payload()).status_code == 200
    finally:
        slots.release()
    assert client.get("/stats").status_code == 200
    assert client.get("/stats/live").status_code == 200
    # Every slot was given back, by refused and served requests alike.
    assert slots.acquire(blocking=False)
    slots.release()


@one_shard
def test_ingest_never_touches_postgres(config, clock):
    app = create_app(replace(config, database_url=UNREACHABLE_DATABASE_URL), clock=clock)
    client = app.test_client()
    began = time.monotonic()
    for i in range(20):
        assert client.post("/stats", json=payload(token=f"t{i}")).status_code == 200
        assert client.post("/stats/batch", json=[payload(token=f"b{i}")]).status_code == 200
    assert time.monotonic() - began < 2  # a connection attempt alone would take longer
    assert client.get("/stats").status_code == 503


# --- the flush and the retention ---------------------------------------------------------


def _fill(redis: Redis, config: Config, n: int = 30) -> int:
    """Payloads in the window of START; returns the cdn sent."""
    ingest.record(
        redis,
        Scripts(redis),
        config,
        [payload(token=f"f{i}", content=f"c{i % 7}", cdn=i + 1) for i in range(n)],
        START,
    )
    return sum(range(1, n + 1))


def test_flush_against_a_locked_table_gives_up_and_frees_its_lock(redis, pool, config, clock):
    config = replace(config, pg_lock_timeout_ms=400)
    cdn = _fill(redis, config)
    clock.now = START + 600
    flushing = flush_pool(config, 1)
    lock_key = keys.Keys(config.key_prefix).flush_lock()
    try:
        with locked_stats(config.database_url):
            began = time.monotonic()
            with pytest.raises(psycopg2.errors.LockNotAvailable):
                flush_with_lock(redis, flushing, config, clock)
            took = time.monotonic() - began
            assert redis.get(lock_key) is None, "the flusher's lock outlived its flush"
        assert took < 3
        assert stats_rows(pool) == {}
        # Nothing was lost: the next run writes it all, once.
        report = flush_with_lock(redis, flushing, config, clock)
    finally:
        flushing.closeall()
    assert report is not None and report.total("cdn") == cdn
    assert sum(cdn for cdn, _, _ in stats_rows(pool).values()) == cdn
    assert redis.get(lock_key) is None


@one_shard
def test_the_scheduled_flush_logs_the_timeout_and_the_next_run_succeeds(
    redis, pool, config, clock, caplog
):
    config = replace(config, pg_lock_timeout_ms=300)
    cdn = _fill(redis, config)
    clock.now = START + 600
    flushing = flush_pool(config, 1)
    job = FlushJob(redis, flushing, config, clock)
    job.schema_ready = True
    try:
        with caplog.at_level(logging.INFO), locked_stats(config.database_url):
            job()
        [failed] = [r for r in caplog.records if r.getMessage() == "flush_failed"]
        assert failed.timeout is True and "lock timeout" in failed.reason
        assert redis.get(keys.Keys(config.key_prefix).flush_lock()) is None
        job()
    finally:
        flushing.closeall()
    assert sum(cdn for cdn, _, _ in stats_rows(pool).values()) == cdn


def test_the_flush_lock_is_never_held_past_its_ttl_by_a_stuck_flusher(redis, pool, config, clock):
    """With a 1.5 s lock TTL, the flush's timeouts are capped at 0.3 s: the
    flusher gives up and releases the lock well before the lock could expire."""
    config = replace(config, flush_lock_seconds=1.5, pg_lock_timeout_ms=60_000)
    _fill(redis, config)
    clock.now = START + 600
    flushing = flush_pool(config, 1)
    lock_key = keys.Keys(config.key_prefix).flush_lock()
    ttls: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            ttls.append(redis.pttl(lock_key))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    try:
        with locked_stats(config.database_url):
            watcher.start()
            began = time.monotonic()
            # The lock or the statement timeout (both 0.3 s here) ends the wait.
            with pytest.raises((psycopg2.errors.LockNotAvailable, psycopg2.errors.QueryCanceled)):
                flush_with_lock(redis, flushing, config, clock)
            took = time.monotonic() - began
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join()
        flushing.closeall()
    assert took < 1.5
    assert redis.get(lock_key) is None
    assert any(t > 0 for t in ttls), "the lock was never seen held"


@one_shard
def test_retention_against_a_locked_table_gives_up_and_retries(config, pool, caplog):
    config = replace(config, pg_lock_timeout_ms=300, retention_days=1)
    a_row(pool, NOW - timedelta(days=3))  # a day partition to drop
    retries = []
    pruning = flush_pool(config, 1)
    job = RetentionJob(pruning, config, lambda: START, retry=lambda: retries.append(1))
    try:
        with caplog.at_level(logging.INFO), locked_stats(config.database_url):
            began = time.monotonic()
            job()
            took = time.monotonic() - began
    finally:
        pruning.closeall()
    assert took < 3
    [failed] = [r for r in caplog.records if r.getMessage() == "retention_failed"]
    assert failed.timeout is True
    assert retries == [1]


# --- a real gunicorn: ingest p99 with and without the lock ---------------------------------


@contextmanager
def gunicorn(config: Config, tmp_path: Path, **settings: str) -> Iterator[int]:
    """``payload-stats web`` (2 workers x 8 threads) on a free port; yields the port."""
    port = free_port()
    env = cli_environment(
        config,
        STATS_WEB_WORKERS="2",
        STATS_WEB_THREADS="8",
        STATS_LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
        **settings,
    )
    log = tmp_path / "web.log"
    proc = start_cli(env, "web", "--bind", f"127.0.0.1:{port}", log=log, new_session=True)
    try:
        try:
            wait_for_port(port, proc)
        except (RuntimeError, TimeoutError):
            raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
        yield port
    finally:
        stop(proc)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a new connection, as a device posting every 30 s makes it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        headers = {"Content-Type": "application/json", "Connection": "close"}
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def probe_phase(port: int, label: str, count: int) -> tuple[list[float], int]:
    """``count`` probes POST /stats, one after the other; (latencies, cdn counted)."""
    latencies = []
    cdn = 0
    for i in range(count):
        body = json.dumps(payload(token=f"{label}-{i}", customer="probe", cdn=i + 1)).encode()
        began = time.monotonic()
        status, _ = request(port, "POST", "/stats", body)
        latencies.append(time.monotonic() - began)
        assert status == 200, (label, i, status)
        cdn += i + 1
        time.sleep(0.01)
    return latencies, cdn


@pytest.mark.slow
@one_shard
def test_a_locked_stats_table_does_not_slow_ingest(config, pool, redis, tmp_path):
    """20 readers hammer GET /stats while ``stats`` is locked: they get 503 within
    the lock timeout (or at once when the read slots are full), and the probes'
    p99 stays close to the p99 of the same probes with the table free."""
    lock_timeout = 1.0
    a_row(pool)
    with gunicorn(config, tmp_path, STATS_PG_LOCK_TIMEOUT_MS=str(int(lock_timeout * 1000))) as port:
        reads: list[tuple[float, float, int, bytes]] = []  # began, took, status, body
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    status, body = request(port, "GET", "/stats?limit=10")
                except OSError as exc:
                    status, body = -1, str(exc).encode()
                reads.append((began, time.monotonic() - began, status, body))

        readers = [threading.Thread(target=reader) for _ in range(20)]
        for t in readers:
            t.start()
        try:
            quiet, cdn_quiet = probe_phase(port, "quiet", 150)
            free_reads = list(reads)
            with locked_stats(config.database_url):
                lock_began = time.monotonic()
                locked, cdn_locked = probe_phase(port, "locked", 150)
                lock_ended = time.monotonic()
            # Reads that started and ended while the table was locked.
            locked_reads = [
                (took, status, body)
                for began, took, status, body in reads
                if began > lock_began and began + took < lock_ended
            ]
        finally:
            stop.set()
            for t in readers:
                t.join()

    p99_quiet, p99_locked = percentile(quiet, 99), percentile(locked, 99)
    print(
        f"ingest p99: free {p99_quiet * 1000:.1f} ms, locked {p99_locked * 1000:.1f} ms "
        f"(ratio {p99_locked / p99_quiet:.2f}); reads while locked: {len(locked_reads)}, "
        f"slowest {max(r[0] for r in locked_reads):.2f} s"
    )
    assert p99_locked < max(4 * p99_quiet, 0.25), (p99_quiet, p99_locked)
    assert free_reads and all(status in (200, 503) for _, _, status, _ in free_reads)
    # While locked, every read is refused: after the lock timeout, or at once when
    # the worker's read slots are all waiting.
    assert locked_reads
    assert {status for _, status, _ in locked_reads} == {503}
    assert all(json.loads(body)["error"] == "unavailable" for _, _, body in locked_reads)
    assert max(took for took, _, _ in locked_reads) < lock_timeout + 1.5
    assert min(took for took, _, _ in locked_reads) < lock_timeout / 2  # slots full: at once
    # Every probe was counted.
    k = int(time.time() // config.window_seconds)
    counted = 0
    for window in (k - 1, k):
        name = keys.Keys(config.key_prefix).counters(
            0, window, keys.encode_ident("probe", "movie-1")
        )
        counted += int(redis.hget(name, counters.CDN) or 0)
    assert counted == cdn_quiet + cdn_locked

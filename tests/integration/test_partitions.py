"""Day partitions of ``stats`` (docs/stats-table.md, "Partitions") and the migration
that introduces them, on the real PostgreSQL.

A flush of a window far in the future or the past creates the partition it
needs (never a DEFAULT partition); concurrent writers create it once; and
``init-db`` on a database at schema version 3 with rows moves every row, to
the byte, into the partitioned table, and rolls them up.
"""

from __future__ import annotations

import random
import threading
import uuid
from datetime import date, datetime, timedelta, timezone

import psycopg2
import psycopg2.extras
import pytest

from payload_stats.flush.flusher import flush_once
from payload_stats.postgres import partitions, rollups
from payload_stats.postgres.migrations import migrate, migrations
from payload_stats.postgres.pool import connection, create_pool
from payload_stats.query import history
from payload_stats.query.history_params import Query, decode_cursor
from tests.conftest import START, with_search_path, write_rows
from tests.integration.test_rollups import assert_rollups_exact, query
from tests.support.drive import Feeder, flush_time
from tests.support.store import stats_table

DAY = timedelta(days=1)


def partition_days(pool) -> list[date]:
    with connection(pool) as conn:
        try:
            return [p.day for p in partitions.attached(conn)]
        finally:
            conn.rollback()


def no_default_partition(pool) -> bool:
    return query(
        pool,
        "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'stats'::regclass "
        "AND partdefid <> 0",
    ) == [(0,)]


@pytest.mark.parametrize("days", [3650, -3650, 400, -1], ids=["+10y", "-10y", "+400d", "-1d"])
def test_a_flush_creates_the_partition_of_a_far_window(redis, pool, config, clock, days):
    clock.now = START + days * 86400
    feeder = Feeder(redis, config)
    feeder.send([feeder.make("acme", "movie", cdn=5, p2p=7)], clock.now)
    end = feeder.model.ends()[0]
    assert partitions.day_of(datetime.fromtimestamp(end, tz=timezone.utc)) not in partition_days(
        pool
    )
    clock.now = flush_time(end, config)
    report = flush_once(redis, pool, config, clock)
    assert report.rows == 1
    assert stats_table(pool) == feeder.model.rows()
    assert partition_days(pool) == [datetime.fromtimestamp(end, tz=timezone.utc).date()]
    assert no_default_partition(pool)
    assert_rollups_exact(pool)


def test_concurrent_writers_create_a_partition_once(pool, config):
    day = date(2031, 5, 17)
    t = datetime(2031, 5, 17, 12, tzinfo=timezone.utc)
    errors = []
    barrier = threading.Barrier(6)
    p = create_pool(config.database_url, 6)

    def writer(i: int) -> None:
        try:
            barrier.wait()
            write_rows(p, [(t, f"c{i}", "x", i, 0, 0, 1)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        p.closeall()
    assert errors == []
    assert partition_days(pool) == [day]
    assert query(pool, "SELECT count(*) FROM stats") == [(6,)]


def test_a_row_without_a_partition_is_refused_not_hidden(pool):
    """An INSERT that bypasses the write path finds no DEFAULT partition to
    land in: it fails, rather than putting a row where retention never looks."""
    with connection(pool) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute(
                "INSERT INTO stats (time, customer, content) VALUES ('2040-01-01T00:05Z', 'a', 'b')"
            )
        conn.rollback()


def test_partitions_are_named_by_day_and_bounded_in_utc(pool):
    with connection(pool) as conn:
        assert partitions.ensure(conn, [date(2026, 3, 29), date(2026, 3, 29)]) == 1
        assert partitions.ensure(conn, [date(2026, 3, 29)]) == 0
        with conn, conn.cursor() as cur:
            # Whatever the session's time zone (here one whose clocks change
            # that night), a day is a UTC day.
            cur.execute("SET LOCAL TIME ZONE 'Europe/Paris'")
            cur.execute("SELECT stats_ensure_partitions(ARRAY['2026-03-30'::date])")
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")
            cur.execute(
                "SELECT relname, pg_get_expr(relpartbound, oid) FROM pg_class "
                "WHERE relname IN ('stats_20260329', 'stats_20260330') "
                "AND relnamespace = current_schema()::regnamespace ORDER BY 1"
            )
            assert cur.fetchall() == [
                (
                    "stats_20260329",
                    "FOR VALUES FROM ('2026-03-29 00:00:00+00') TO ('2026-03-30 00:00:00+00')",
                ),
                (
                    "stats_20260330",
                    "FOR VALUES FROM ('2026-03-30 00:00:00+00') TO ('2026-03-31 00:00:00+00')",
                ),
            ]
    write_rows(pool, [(datetime(2026, 3, 29, 23, 55, tzinfo=timezone.utc), "a", "b", 1, 1, 1, 1)])
    write_rows(pool, [(datetime(2026, 3, 30, 0, 0, tzinfo=timezone.utc), "a", "b", 1, 1, 1, 1)])
    assert sorted(query(pool, "SELECT tableoid::regclass::text FROM stats")) == [
        ("stats_20260329",),
        ("stats_20260330",),
    ]


def test_raw_pages_span_many_partitions_in_slices(pool, config):
    """Rows a year apart: a page without a range reads slices of growing length,
    and still returns every row once, in order, both ways."""
    times = [
        datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=d) for d in range(0, 365, 9)
    ]
    write_rows(pool, [(t, "acme", f"x{i % 3}", i, 0, 0, 1) for i, t in enumerate(times)])
    for descending in (False, True):
        got = []
        q = Query(limit=7, descending=descending)
        while True:
            rows, cursor = history.fetch(pool, q)
            got += rows
            if cursor is None:
                break
            q = Query(limit=7, descending=descending, after=decode_cursor(cursor, None, None))
        assert [r[0] for r in got] == sorted(times, reverse=descending)


# --- the migration from an unpartitioned stats ------------------------------------------------


@pytest.fixture
def version_3(database_url):
    """A fresh schema migrated up to version 3 (stats unpartitioned), and its URL."""
    schema = f"test_v3_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    url = with_search_path(database_url, schema)
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, text in migrations():
            if version <= 3:
                cur.execute(text)
                cur.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, name))
    conn.close()
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def old_rows(seed: int, n: int) -> list[tuple]:
    rnd = random.Random(seed)
    names = ["acme", "a,b", 'q"uote', "ünï", "x" * 256, "live/1", " spaced "]
    rows = {}
    edges = [
        datetime(2025, 12, 31, 23, 55, tzinfo=timezone.utc),
        datetime(2026, 1, 1, 0, 0, tzinfo=timezone.utc),  # a window end at midnight
        datetime(2026, 1, 1, 0, 5, tzinfo=timezone.utc),
    ]
    while len(rows) < n:
        t = (
            rnd.choice(edges)
            if rnd.random() < 0.1
            else datetime(2025, 6, 1, tzinfo=timezone.utc)
            + timedelta(minutes=5 * rnd.randrange(12 * 24 * 300))
        )
        key = (t, rnd.choice(names), rnd.choice(names))
        big = rnd.random() < 0.05
        rows[key] = (
            2**63 - 1 if big else rnd.randrange(10**12),
            rnd.randrange(10**12),
            rnd.randrange(100),
            rnd.randrange(1, 1000),
            2**63 - 1 if big else rnd.randrange(10**9),
        )
    return [(*k, *v) for k, v in rows.items()]


# Every column of every row, in text, hashed in key order.
FINGERPRINT = (
    "SELECT md5(string_agg(s::text, '|' ORDER BY time, customer, content)) FROM stats AS s"
)


def test_migrating_a_stats_table_with_rows_keeps_every_row(version_3):
    rows = old_rows(7, 5000)
    conn = psycopg2.connect(version_3)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO stats (time, customer, content, cdn, p2p, sessions, payloads, watch_ms) "
            "VALUES %s",
            rows,
            page_size=1000,
        )
        cur.execute("SELECT relkind FROM pg_class WHERE oid = 'stats'::regclass")
        assert cur.fetchone()[0] == "r"
        cur.execute(
            "SELECT md5(string_agg(s::text, '|' ORDER BY time, customer, content)) FROM stats s"
        )
        before = cur.fetchone()[0]
    conn.close()

    pool = create_pool(version_3, 2)
    try:
        assert migrate(pool) == ["0004_partitions_rollups"]
        assert migrate(pool) == []
        [(kind,)] = query(pool, "SELECT relkind FROM pg_class WHERE oid = 'stats'::regclass")
        assert kind == "p"
        [(after,)] = query(pool, FINGERPRINT)
        assert after == before, "a row changed in the migration"
        got = query(
            pool,
            "SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms FROM stats",
        )
        assert sorted(got) == sorted(rows)
        assert partition_days(pool) == sorted({r[0].date() for r in rows})
        assert no_default_partition(pool)
        assert query(pool, "SELECT to_regclass('stats_unpartitioned')") == [(None,)]
        # Indexes and the primary key are there, on every partition.
        [(indexes,)] = query(
            pool,
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'stats' AND schemaname = "
            "current_schema()",
        )
        assert indexes == 3
        # The rows are rolled up, and new writes add to them.
        assert_rollups_exact(pool)
        write_rows(pool, [(rows[0][0], "new", "row", 1, 1, 1, 1, 1)])
        assert_rollups_exact(pool)
        first, last = min(r[0] for r in rows), max(r[0] for r in rows)
        assert rollups.verify(pool, first, last + DAY) == []
    finally:
        pool.closeall()


def test_concurrent_init_db_on_version_3_migrates_once(version_3):
    rows = old_rows(8, 300)
    conn = psycopg2.connect(version_3)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO stats (time, customer, content, cdn, p2p, sessions, payloads, watch_ms) "
            "VALUES %s",
            rows,
        )
    conn.close()
    pools = [create_pool(version_3, 1) for _ in range(3)]
    results, errors = [], []

    def run(p) -> None:
        try:
            results.append(migrate(p))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in pools]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert errors == []
        assert sorted(results) == [[], [], ["0004_partitions_rollups"]]
        assert sorted(query(pools[0], "SELECT time, customer, content, cdn, p2p, sessions, "
                                      "payloads, watch_ms FROM stats")) == sorted(rows)  # fmt: skip
        assert_rollups_exact(pools[0])
    finally:
        for p in pools:
            p.closeall()

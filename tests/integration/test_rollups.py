"""Rollups kept exactly once (docs/stats-table.md, "Rollups"), against the real servers.

The hourly and daily rollups are written in the flush's transaction, from the
same summed rows as ``stats``. Every test here computes the rollups in Python
from the ``stats`` rows read back (and ``stats`` itself against the reference
model, ``tests/support/model.py``), and compares the four rollup tables with them
exactly, after flushes across hour and day boundaries, stragglers, a
replayed snapshot, a crash at each failpoint, a quarantine merge. ``verify``
must find nothing then, and must find a rollup corrupted on purpose.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from payload_stats.buffer import snapshots
from payload_stats.flush.flusher import flush_once
from payload_stats.ops import cli
from payload_stats.postgres import quarantine, rollups
from payload_stats.postgres.pool import connection
from tests.conftest import START, shard_counts, write_rows
from tests.integration.test_flush import _snapshot_dump
from tests.support.drive import Crash, Feeder, crash_at, flush_time
from tests.support.servers import cli_environment
from tests.support.store import assert_drained, stats_table

MAX_BIGINT = 2**63 - 1
K0 = math.floor(START / 300)
TABLES = {
    "stats_hourly": ("hour", True),
    "stats_daily": ("day", True),
    "stats_customer_hourly": ("hour", False),
    "stats_customer_daily": ("day", False),
}


def query(pool, statement: str, params=None) -> list[tuple]:
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall()
        conn.rollback()
    return rows


def execute(pool, statement: str, params=None) -> None:
    with connection(pool) as conn, conn, conn.cursor() as cur:
        cur.execute(statement, params)


def truncate(moment: datetime, unit: str) -> datetime:
    moment = moment.astimezone(timezone.utc)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def expected_rollups(pool) -> dict[str, dict[tuple, tuple[int, ...]]]:
    """The four rollups computed in Python from every stats row."""
    rows = query(
        pool, "SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms FROM stats"
    )
    out: dict[str, dict[tuple, list[int]]] = {}
    for table, (unit, with_content) in TABLES.items():
        sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * 5)
        for t, cu, co, *values in rows:
            key = (truncate(t, unit), cu, co) if with_content else (truncate(t, unit), cu)
            sums[key] = [a + b for a, b in zip(sums[key], values, strict=True)]
        out[table] = {k: tuple(v) for k, v in sums.items()}
    return out


def rollup_tables(pool) -> dict[str, dict[tuple, tuple[int, ...]]]:
    out = {}
    for table, (_, with_content) in TABLES.items():
        names = "bucket, customer, content" if with_content else "bucket, customer"
        width = 3 if with_content else 2
        out[table] = {
            (r[0].astimezone(timezone.utc), *r[1:width]): tuple(int(v) for v in r[width:])
            for r in query(
                pool, f"SELECT {names}, cdn, p2p, sessions, payloads, watch_ms FROM {table}"
            )
        }
    return out


def assert_rollups_exact(pool) -> None:
    got, want = rollup_tables(pool), expected_rollups(pool)
    for table in TABLES:
        assert got[table] == want[table], table
    # verify agrees: nothing to report over every day there is.
    [(first, last)] = query(pool, "SELECT min(time), max(time) FROM stats")
    if first is not None:
        assert rollups.verify(pool, first, last + timedelta(seconds=1)) == []


def send_over_boundaries(feeder: Feeder) -> list[int]:
    """Payloads in windows ending around an hour and a UTC day boundary, several
    customers and contents, and one content from every shard."""
    length = feeder.config.window_seconds
    # The window ending at 2026-11-27T00:00:00Z and its neighbours.
    midnight = datetime(2026, 11, 27, tzinfo=timezone.utc).timestamp()
    instants = [START + 1, START + 3300 + 1, midnight - 600 + 1, midnight - 300 + 1, midnight + 1]
    for n, now in enumerate(instants):
        batch = [
            feeder.make(
                customer=f"cust-{i % 3}",
                content=f"content-{i}",
                cdn=1000 * n + i,
                p2p=i,
                timespan=30_000 + i,
                sessionDuration=1200,
            )
            for i in range(10)
        ]
        batch += [feeder.make("popular", "live", cdn=7, p2p=3) for _ in range(8)]
        feeder.send(batch, now)
    return sorted({(math.floor(t / length) + 1) * length for t in instants})


@shard_counts
def test_rollups_equal_the_rows_after_flushes_across_hours_and_days(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    ends = send_over_boundaries(feeder)
    clock.now = flush_time(ends[-1], config)
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_rollups_exact(pool)
    got = rollup_tables(pool)
    # The window ending at midnight belongs to the new day (its time is its end).
    new_day = datetime(2026, 11, 27, tzinfo=timezone.utc)
    assert {k[0] for k in got["stats_customer_daily"]} == {new_day - timedelta(days=1), new_day}
    # Its hour holds the windows ending at 00:00 and 00:05: 2 x 8 payloads of 30 s.
    assert got["stats_customer_hourly"][(new_day, "popular")][3:] == (16, 16 * 30_000)


@shard_counts
def test_rollups_with_stragglers(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    ends = send_over_boundaries(feeder)
    clock.now = flush_time(ends[-1], config)
    flush_once(redis, pool, config, clock)
    # Late payloads for flushed windows, new and existing pairs.
    feeder.send([feeder.make("cust-1", "content-1", cdn=5, p2p=6)], START + 2)
    feeder.send([feeder.make("late", "new", cdn=9, p2p=1)], ends[-1] - 1)
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_rollups_exact(pool)


@shard_counts
def test_a_replayed_snapshot_adds_nothing_to_the_rollups(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    ends = send_over_boundaries(feeder)
    clock.now = flush_time(ends[-1], config)
    dumped: dict = {}

    def keep_copy(point: str) -> None:
        if point == "after_commit" and not dumped:  # the first window's, committed
            dumped.update(_snapshot_dump(redis, config))

    flush_once(redis, pool, config, clock, failpoint=keep_copy)
    before = rollup_tables(pool)
    for name, value in dumped.items():
        redis.restore(name, 0, value, replace=True)
    assert snapshots.pending_snapshots(redis, config)
    report = flush_once(redis, pool, config, clock)
    assert report.rows == 0
    assert rollup_tables(pool) == before
    assert_rollups_exact(pool)
    assert_drained(redis, config)


@shard_counts
@pytest.mark.parametrize(
    ("point", "occurrence"),
    [("after_freeze", 1), ("mid_batch", 1), ("mid_batch", 3), ("after_commit", 2)],
)
def test_rollups_after_a_crash_mid_flush(redis, pool, config, clock, point, occurrence):
    feeder = Feeder(redis, config)
    ends = send_over_boundaries(feeder)
    clock.now = flush_time(ends[-1], config)
    with pytest.raises(Crash):
        flush_once(redis, pool, config, clock, failpoint=crash_at(point, occurrence))
    assert_rollups_exact(pool)  # whatever committed, rows and rollups together
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == feeder.model.rows()
    assert_rollups_exact(pool)
    assert_drained(redis, config)


# --- numbers past bigint ------------------------------------------------------------


def test_rollups_past_bigint_are_exact(client, pool):
    """Two rows of 2^63-1 in one hour: the rollup holds 2^64-2, served exactly."""
    end = datetime(2026, 11, 26, 10, 5, tzinfo=timezone.utc)
    write_rows(
        pool,
        [
            (end, "big", "a", MAX_BIGINT, 0, 1, 1, MAX_BIGINT),
            (end + timedelta(minutes=5), "big", "a", MAX_BIGINT, 1, 1, 1, 1),
        ],
    )
    assert_rollups_exact(pool)
    for bucket in ("1h", "1d", "1mo"):
        [row] = client.get(f"/stats?bucket={bucket}&group_by=customer").get_json()["rows"]
        assert row["cdn"] == 2 * MAX_BIGINT
        assert row["watch_ms"] == MAX_BIGINT + 1
    csv_text = client.get("/stats?bucket=1h&format=csv").get_data(as_text=True)
    assert f",{2 * MAX_BIGINT},1,2,2,{MAX_BIGINT + 1}," in csv_text


# --- the quarantine merge -----------------------------------------------------------


def test_a_quarantine_merge_updates_the_rollups(redis, pool, config, clock):
    feeder = Feeder(redis, config)
    end = datetime.fromtimestamp((K0 + 1) * 300, tz=timezone.utc)
    write_rows(pool, [(end, "acme", "movie", MAX_BIGINT - 10, 0, 0, 1, 0)])
    feeder.send([feeder.make("acme", "movie", cdn=250, p2p=100)], START)
    feeder.send([feeder.make("acme", "other", cdn=1, p2p=2)], START)
    clock.now = flush_time(int(end.timestamp()), config)
    report = flush_once(redis, pool, config, clock)
    assert report.total("quarantined") == 1
    [isolated] = quarantine.unresolved(pool)
    assert (isolated.cdn, isolated.p2p) == (250, 100)
    assert_rollups_exact(pool)  # the isolated pair is in neither stats nor the rollups
    before = rollup_tables(pool)

    # An operator makes room (a correction of the row, applied to its rollups too).
    for table in ("stats", *TABLES):
        execute(pool, f"UPDATE {table} SET cdn = cdn - 1000 WHERE customer = 'acme' AND cdn > 1000")
    quarantine.merge(pool, isolated.id)

    assert quarantine.unresolved(pool) == []
    assert_rollups_exact(pool)
    after = rollup_tables(pool)
    for table, (_, with_content) in TABLES.items():
        for key, values in after[table].items():
            if key[1] != "acme" or (with_content and key[2] != "movie"):
                continue
            old = before[table][key]
            assert values[0] == old[0] - 1000 + 250, table
            assert values[1:4] == (old[1] + 100, old[2] + isolated.sessions, old[3] + 1), table


# --- verify -------------------------------------------------------------------------


@pytest.fixture
def written(pool):
    """Rows over two UTC days, through the write path."""
    start = datetime(2026, 11, 25, 22, 5, tzinfo=timezone.utc)
    write_rows(
        pool,
        [
            (start + timedelta(minutes=5 * w), f"c{i % 2}", f"x{i}", w * 10 + i, i, 1, 2, 100)
            for w in range(12 * 30)
            for i in range(4)
        ],
    )
    return start


def run_verify(config, *args: str):
    env = cli_environment(config)
    return CliRunner().invoke(cli.cli, ["verify", *args], env=env, catch_exceptions=False)


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("stats_hourly", "UPDATE stats_hourly SET cdn = cdn + 1 WHERE ctid = "
         "(SELECT ctid FROM stats_hourly WHERE content = 'x3' ORDER BY bucket LIMIT 1)"),
        ("stats_daily", "DELETE FROM stats_daily WHERE content = 'x1' AND "
         "bucket = '2026-11-26T00:00:00Z'"),
        ("stats_customer_hourly", "INSERT INTO stats_customer_hourly VALUES "
         "('2026-11-26T03:00:00Z', 'ghost', 1, 0, 0, 1, 0)"),
        ("stats_customer_daily", "UPDATE stats_customer_daily SET watch_ms = watch_ms - 1 "
         "WHERE customer = 'c0' AND bucket = '2026-11-25T00:00:00Z'"),
    ],
    ids=["changed", "missing", "extra", "watch_ms"],
)  # fmt: skip
def test_verify_finds_a_corrupted_rollup(config, pool, written, table, change):
    span = ("--from", "2026-11-25T00:00:00Z", "--to", "2026-11-27T00:00:00Z")
    clean = run_verify(config, *span)
    assert clean.exit_code == 0, clean.output
    assert "the rollups equal the stats rows: 2 UTC day(s)" in clean.output

    execute(pool, change)
    [difference] = rollups.verify(
        pool,
        datetime(2026, 11, 25, tzinfo=timezone.utc),
        datetime(2026, 11, 27, tzinfo=timezone.utc),
    )
    assert difference.table == table
    found = run_verify(config, *span)
    assert found.exit_code == 1
    assert difference.describe() in found.output
    assert "1 difference(s) between the rollups and the stats rows" in found.output
    # A range that does not include the corrupted bucket's day finds nothing.
    other_day = "2026-11-25" if difference.bucket.day == 26 else "2026-11-26"
    assert run_verify(config, "--from", other_day, "--to", other_day + "T23:59:59Z").exit_code == 0


def test_verify_needs_a_range(config, pool):
    result = run_verify(config, "--from", "2026-11-26")
    assert result.exit_code == 2
    assert "--to" in result.output
    assert run_verify(config, "--from", "nonsense", "--to", "2026-11-26").exit_code == 2

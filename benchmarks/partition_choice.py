"""Day or week partitions for ``stats``: the measurements behind the choice.

    python -m benchmarks.partition_choice      # ~10 minutes, ~8 GB for a while

In a schema of its own (dropped at the end), with the indexes of ``stats``:

1. ``stats_day`` and ``stats_week``: the same year of rows (100 keys per
   5-minute window, 10.5 M rows), one partitioned by day (426 partitions,
   some ahead), one by week (61). Queries with and without a time range:
   time (p50 of 20) and, for the unbounded one, planning time and the locks
   one query takes.
2. ``big_day`` and ``big_week``: one partition each, holding what a busy
   deployment (10,000 keys per window) writes in 20 hours and in 6 days 20
   hours: 2.4 M and 19.7 M rows. A flush-like upsert of 10,000 new rows into
   each, 12 windows alternated; then retention: detaching and dropping the
   partition, and, for the week, deleting one day's rows instead.
"""

from __future__ import annotations

import io
import statistics
import sys
import time

import psycopg2

from .sandbox import DEFAULT_DATABASE_URL, Schema

COLUMNS = """(time timestamptz NOT NULL, customer text NOT NULL, content text NOT NULL,
    cdn bigint NOT NULL, p2p bigint NOT NULL, sessions bigint NOT NULL,
    payloads bigint NOT NULL, watch_ms bigint NOT NULL)"""


def table(cur, name: str) -> None:
    cur.execute(f"CREATE TABLE {name} {COLUMNS} PARTITION BY RANGE (time)")
    cur.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (time, customer, content)")
    cur.execute(f"CREATE INDEX ON {name} (customer, time)")
    cur.execute(f"CREATE INDEX ON {name} (content, time)")


def fill(cur, name: str, first: str, last: str, keys: int) -> None:
    cur.execute(
        f"INSERT INTO {name} SELECT t, 'customer-' || lpad((k %% 10)::text, 2, '0'), "
        "'vod/' || lpad((k / 10)::text, 5, '0'), 1000000 + k, 500000 + k, k %% 3, 10, 300000 "
        "FROM generate_series(%s::timestamptz, %s::timestamptz, interval '5 minutes') AS t, "
        "generate_series(0, %s) AS k",
        (first, last, keys - 1),
    )


def timed(cur, statement: str, n: int = 20) -> str:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        cur.execute(statement)
        cur.fetchall()
        samples.append(1000 * (time.perf_counter() - started))
    return f"p50 {statistics.median(samples):.1f} ms"


QUERIES = {
    "first page, no range": "SELECT * FROM {t} ORDER BY time, customer, content LIMIT 101",
    "one customer, no range": (
        "SELECT * FROM {t} WHERE customer = 'customer-03' ORDER BY time, customer, content "
        "LIMIT 101"
    ),
    "one customer-day": (
        "SELECT * FROM {t} WHERE customer = 'customer-03' AND time >= '2026-06-10' "
        "AND time < '2026-06-11' ORDER BY time, customer, content LIMIT 1001"
    ),
    "one customer's month by day": (
        "SELECT date_trunc('day', time, 'UTC'), sum(cdn) FROM {t} WHERE customer = "
        "'customer-03' AND time >= '2026-06-01' AND time < '2026-07-01' GROUP BY 1"
    ),
}


def main(database_url: str = DEFAULT_DATABASE_URL) -> None:
    schema = Schema(database_url)
    conn = psycopg2.connect(schema.url)
    conn.autocommit = True
    cur = conn.cursor()
    try:
        print("filling a year twice (10.5 M rows each)...", file=sys.stderr)
        table(cur, "stats_day")
        table(cur, "stats_week")
        cur.execute(
            "DO $$ DECLARE d date; BEGIN "
            "FOR d IN SELECT generate_series(date '2025-11-01', date '2026-12-31', "
            "interval '1 day')::date LOOP EXECUTE format('CREATE TABLE stats_day_%s PARTITION "
            "OF stats_day FOR VALUES FROM (%L) TO (%L)', to_char(d, 'YYYYMMDD'), "
            "d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC'); END LOOP; "
            "FOR d IN SELECT generate_series(date '2025-10-27', date '2026-12-31', "
            "interval '7 days')::date LOOP EXECUTE format('CREATE TABLE stats_week_%s PARTITION "
            "OF stats_week FOR VALUES FROM (%L) TO (%L)', to_char(d, 'YYYYMMDD'), "
            "d::timestamp AT TIME ZONE 'UTC', (d + 7)::timestamp AT TIME ZONE 'UTC'); END LOOP; "
            "END $$"
        )
        for name in ("stats_day", "stats_week"):
            fill(cur, name, "2025-11-26 00:05:00+00", "2026-11-26 00:00:00+00", 100)
            cur.execute(f"VACUUM ANALYZE {name}")
        for label, statement in QUERIES.items():
            for name in ("stats_day", "stats_week"):
                print(f"{label:30s} {name:10s} {timed(cur, statement.format(t=name))}")
        for name in ("stats_day", "stats_week"):
            cur.execute("BEGIN")
            cur.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["first page, no range"].format(t=name)
            )
            plan = cur.fetchone()[0][0]
            cur.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()")
            locks = cur.fetchone()[0]
            cur.execute("ROLLBACK")
            print(
                f"no range, {name}: planning {plan['Planning Time']:.1f} ms, execution "
                f"{plan['Execution Time']:.1f} ms, {locks} locks held"
            )

        print("filling one busy day and one busy week (2.4 M, 19.7 M rows)...", file=sys.stderr)
        for name, lower in (("big_day", "2026-06-07"), ("big_week", "2026-06-01")):
            table(cur, name)
            cur.execute(
                f"CREATE TABLE {name}_p PARTITION OF {name} FOR VALUES FROM "
                f"('{lower} 00:00+00') TO ('2026-06-08 00:00+00')"
            )
        fill(cur, "big_week", "2026-06-01 00:05:00+00", "2026-06-07 20:00:00+00", 10_000)
        cur.execute("INSERT INTO big_day SELECT * FROM big_week WHERE time >= '2026-06-07'")
        cur.execute("VACUUM ANALYZE big_day")
        cur.execute("VACUUM ANALYZE big_week")
        upserts: dict[str, list[float]] = {"big_day": [], "big_week": []}
        rows = "".join(
            f"customer-{k % 10:02d},vod/{k // 10:05d},{k},{k},1,10,300000\n" for k in range(10_000)
        )
        conn.autocommit = False
        for w in range(12):
            at = f"2026-06-07 {20 + (w + 1) // 12:02d}:{(5 * (w + 1)) % 60:02d}:00+00"
            for name in ("big_day", "big_week") if w % 2 else ("big_week", "big_day"):
                started = time.perf_counter()
                cur.execute(
                    "CREATE TEMP TABLE st (customer text, content text, cdn bigint, p2p bigint, "
                    "sessions bigint, payloads bigint, watch_ms bigint) ON COMMIT DROP"
                )
                cur.copy_expert("COPY st FROM STDIN WITH (FORMAT csv)", io.StringIO(rows))
                cur.execute(
                    f"INSERT INTO {name} AS s SELECT %s, customer, content, cdn, p2p, sessions, "
                    "payloads, watch_ms FROM st ON CONFLICT (time, customer, content) "
                    "DO UPDATE SET cdn = s.cdn + EXCLUDED.cdn",
                    (at,),
                )
                conn.commit()
                upserts[name].append(1000 * (time.perf_counter() - started))
        conn.autocommit = True
        for name, samples in upserts.items():
            print(f"10,000-row upsert into {name}: p50 {statistics.median(samples):.0f} ms")
        started = time.perf_counter()
        cur.execute("DELETE FROM big_week WHERE time < '2026-06-02'")
        seconds = time.perf_counter() - started
        print(f"big_week: DELETE one day, {cur.rowcount:,} rows: {seconds:.2f} s")
        for name in ("big_day", "big_week"):
            started = time.perf_counter()
            cur.execute(f"ALTER TABLE {name} DETACH PARTITION {name}_p CONCURRENTLY")
            detached = time.perf_counter()
            cur.execute(f"DROP TABLE {name}_p")
            print(
                f"{name}: DETACH CONCURRENTLY {1000 * (detached - started):.0f} ms, "
                f"DROP {1000 * (time.perf_counter() - detached):.0f} ms"
            )
    finally:
        conn.close()
        schema.drop()


if __name__ == "__main__":
    main()

"""History queries at scale: a year of rows filled through ``payload-stats import``,
then the operators' queries through GET /stats's code path, each beside the
same question asked of the raw ``stats`` rows in the same run.

For each cardinality (keys per 5-minute window: 10 customers x keys/10
contents), in a schema of its own that is dropped at the end:

1. fill: one CSV stream per month, generated here, through
   ``payload_stats.ops.importer.import_file`` (the code of ``payload-stats
   import``); rows/s over the whole fill. Then VACUUM ANALYZE (what
   autovacuum does on its own soon after a load).
2. queries, with random customers and periods, interleaved:

   | query | the service's path | raw |
   |---|---|---|
   | one customer-day, raw rows | ``history.fetch``, a page of 1000 | one SELECT ... LIMIT 1000 |
   | one customer's month by day | ``history.fetch`` bucket=1d | GROUP BY date_trunc over stats |
   | all customers' month by day | ``history.fetch`` bucket=1d group_by=customer | same |
   | one customer's year by month | ``history.fetch`` bucket=1mo | same |
   | top 20 contents of a customer over a week | SQL on ``stats_daily`` | same on stats |

3. retention: ``retention.prune`` with a clock one day later, which drops
   the oldest day (its partition, rollup and ledger rows); seconds.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg2

from payload_stats.config import Config
from payload_stats.flush import retention
from payload_stats.ops import importer
from payload_stats.postgres.migrations import migrate
from payload_stats.postgres.pool import connection, create_pool
from payload_stats.query import history
from payload_stats.query.history_params import Query

from . import sandbox

CUSTOMERS = 10
WINDOW = 300
DAY = timedelta(days=1)

RAW_SQL = {
    "customer_day": (
        "SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms FROM stats "
        "WHERE customer = %(customer)s AND time >= %(lo)s AND time < %(hi)s "
        "ORDER BY time, customer, content LIMIT 1000"
    ),
    "customer_month_by_day": (
        "SELECT date_trunc('day', time, 'UTC') AS day, customer, sum(cdn), sum(p2p), "
        "sum(sessions), sum(payloads), sum(watch_ms) FROM stats "
        "WHERE customer = %(customer)s AND time >= %(lo)s AND time < %(hi)s "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ),
    "all_month_by_day": (
        "SELECT date_trunc('day', time, 'UTC') AS day, customer, sum(cdn), sum(p2p), "
        "sum(sessions), sum(payloads), sum(watch_ms) FROM stats "
        "WHERE time >= %(lo)s AND time < %(hi)s GROUP BY 1, 2 ORDER BY 1, 2"
    ),
    "customer_year_by_month": (
        "SELECT date_trunc('month', time, 'UTC') AS month, customer, sum(cdn), sum(p2p), "
        "sum(sessions), sum(payloads), sum(watch_ms) FROM stats "
        "WHERE customer = %(customer)s AND time >= %(lo)s AND time < %(hi)s "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ),
    "top_contents_week": (
        "SELECT content, sum(cdn) + sum(p2p) AS bytes FROM stats "
        "WHERE customer = %(customer)s AND time >= %(lo)s AND time < %(hi)s "
        "GROUP BY content ORDER BY bytes DESC, content LIMIT 20"
    ),
}
TOP_FROM_ROLLUP = (
    "SELECT content, sum(cdn) + sum(p2p) AS bytes FROM stats_daily "
    "WHERE customer = %(customer)s AND bucket >= %(lo)s AND bucket < %(hi)s "
    "GROUP BY content ORDER BY bytes DESC, content LIMIT 20"
)
QUERIES = {
    "customer_day": "one customer-day, raw rows (a page of 1000)",
    "customer_month_by_day": "one customer's month by day",
    "all_month_by_day": "all customers' month by day",
    "customer_year_by_month": "one customer's year by month",
    "top_contents_week": "top 20 contents of a customer over a week",
}


def lines(keys: int, first_day: datetime, days: int, seed: int) -> Iterator[bytes]:
    """CSV lines of ``keys`` rows per 5-minute window over ``days`` days."""
    rnd = random.Random(seed)
    contents = max(1, keys // CUSTOMERS)
    names = [
        (f"customer-{c:02d}".encode(), f"vod/{c:02d}-{i:05d}".encode())
        for i in range(contents)
        for c in range(CUSTOMERS)
    ][:keys]
    yield b"time,customer,content,cdn,p2p,sessions,payloads,watch_ms\n"
    start = int(first_day.timestamp())
    for w in range(1, days * 86400 // WINDOW + 1):
        t = datetime.fromtimestamp(start + w * WINDOW, tz=timezone.utc)
        stamp = t.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        base = rnd.randrange(1_000_000)
        for n, (cu, co) in enumerate(names):
            v = base + n * 7919
            yield b"%s,%s,%s,%d,%d,%d,%d,%d\n" % (
                stamp,
                cu,
                co,
                v % 9_000_000,
                v % 4_000_000,
                n % 3,
                10,
                300_000,
            )


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


class Bench:
    def __init__(self, database_url: str, keys: int, days: int, log: Callable[[str], None]):
        self.schema = sandbox.Schema(database_url)
        self.url = self.schema.url
        self.keys = keys
        self.days = days
        self.log = log
        self.pool = create_pool(self.url, 2)
        migrate(self.pool)
        self.now = time.time()
        today = datetime.fromtimestamp(self.now, tz=timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        # The oldest day kept by STATS_RETENTION_DAYS=365 is today - 365 days.
        self.first_day = today - timedelta(days=days)
        self.config = Config(database_url=self.url, window_seconds=WINDOW, retention_days=365)

    def fill(self) -> dict[str, Any]:
        started = time.monotonic()
        rows = 0
        day = self.first_day
        end = self.first_day + timedelta(days=self.days)
        while day < end:
            # Whole months (or what is left), one import each.
            nxt = min(end, (day.replace(day=1) + timedelta(days=32)).replace(day=1))
            report = importer.import_file(
                self.pool,
                self.config,
                lines(self.keys, day, (nxt - day).days, seed=day.toordinal()),
                now=self.now,
            )
            rows += report.written_rows
            elapsed = time.monotonic() - started
            self.log(f"  imported {rows:,} rows to {nxt:%Y-%m-%d}, {rows / elapsed:,.0f} rows/s")
            day = nxt
        seconds = time.monotonic() - started
        self.log("  VACUUM ANALYZE")
        analyze_started = time.monotonic()
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
            cur.execute(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                "WHERE inhparent = 'stats'::regclass"
            )
            stats_bytes = cur.fetchone()[0]
            cur.execute(
                "SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['stats_hourly', "
                "'stats_daily', 'stats_customer_hourly', 'stats_customer_daily']::regclass[]) AS c"
            )
            rollup_bytes = cur.fetchone()[0]
        conn.close()
        return {
            "rows": rows,
            "seconds": round(seconds, 1),
            "rows_per_s": round(rows / seconds),
            "vacuum_analyze_seconds": round(time.monotonic() - analyze_started, 1),
            "stats_gb": round(stats_bytes / 2**30, 2),
            "rollups_gb": round(rollup_bytes / 2**30, 2),
        }

    def params(self, name: str, rnd: random.Random) -> tuple[Query | None, dict[str, Any]]:
        customer = f"customer-{rnd.randrange(CUSTOMERS):02d}"
        days = self.days
        if name == "customer_day":
            lo = self.first_day + DAY * rnd.randrange(1, days)
            hi = lo + DAY
            q = Query(customer=customer, start=lo, end=hi, limit=1000)
        elif name in ("customer_month_by_day", "all_month_by_day"):
            months = self._months()
            lo, hi = rnd.choice(months[1:-1] or months)
            q = Query(
                customer=customer if name == "customer_month_by_day" else None,
                start=lo,
                end=hi,
                group_by="customer",
                bucket="1d",
                limit=1000,
            )
        elif name == "customer_year_by_month":
            months = self._months()
            lo, hi = months[0][0], months[-1][1]
            q = Query(customer=customer, start=lo, end=hi, group_by="customer", bucket="1mo")
        else:  # top contents over a week: SQL on the daily rollup
            lo = self.first_day + DAY * rnd.randrange(1, days - 7)
            hi = lo + 7 * DAY
            q = None
        return q, {"customer": customer, "lo": lo, "hi": hi}

    def _months(self) -> list[tuple[datetime, datetime]]:
        """The whole calendar months inside the filled year."""
        out = []
        month = (self.first_day.replace(day=1) + timedelta(days=32)).replace(day=1)
        end = self.first_day + timedelta(days=self.days)
        while True:
            nxt = (month + timedelta(days=32)).replace(day=1)
            if nxt > end:
                return out
            out.append((month, nxt))
            month = nxt

    def measure(self, reps: int, raw_reps: int) -> dict[str, Any]:
        rnd = random.Random(42)
        results: dict[str, Any] = {}
        with connection(self.pool) as conn:
            for name, label in QUERIES.items():
                service: list[float] = []
                raw: list[float] = []
                rows = raw_rows = 0
                for i in range(reps):
                    q, p = self.params(name, rnd)

                    def ours(q=q, p=p) -> list:
                        if q is not None:
                            return history.fetch(self.pool, q)[0]
                        with conn.cursor() as cur:
                            cur.execute(TOP_FROM_ROLLUP, p)
                            found = cur.fetchall()
                        conn.rollback()
                        return found

                    def theirs(p=p, name=name) -> list:
                        with conn.cursor() as cur:
                            cur.execute(RAW_SQL[name], p)
                            found = cur.fetchall()
                        conn.rollback()
                        return found

                    # Alternate which goes first: the second reads pages the first
                    # brought into memory (the same ones, for the raw-rows query).
                    pair = [(ours, service), (theirs, raw)] if i < raw_reps else [(ours, service)]
                    if i % 2:
                        pair.reverse()
                    for call, samples in pair:
                        started = time.perf_counter()
                        found = call()
                        samples.append(1000 * (time.perf_counter() - started))
                        if call is ours:
                            rows = len(found)
                        elif name != "customer_day":
                            raw_rows = len(found)
                    if i < raw_reps and name != "customer_day":
                        assert raw_rows == rows, (name, raw_rows, rows)
                results[name] = {
                    "label": label,
                    "rows": rows,
                    "service": percentiles(service),
                    "raw": percentiles(raw),
                }
                s, r = results[name]["service"], results[name]["raw"]
                self.log(
                    f"  {label}: p50 {s['p50_ms']} / p99 {s['p99_ms']} ms; raw p50 "
                    f"{r['p50_ms']} / p99 {r['p99_ms']} ms ({rows} rows)"
                )
        return results

    def retention(self) -> dict[str, Any]:
        """Drop the oldest day: prune with the clock one day on."""
        started = time.monotonic()
        pruned = retention.prune(self.pool, self.days, self.now + 86400)
        seconds = time.monotonic() - started
        self.log(
            f"  retention dropped {len(pruned.days)} day(s), {pruned.rows:,} rows "
            f"in {seconds:.2f} s"
        )
        return {"days": len(pruned.days), "rows": pruned.rows, "seconds": round(seconds, 3)}

    def close(self) -> None:
        self.pool.closeall()
        self.schema.drop()


def run(
    database_url: str,
    keys: int,
    days: int = 365,
    reps: int = 100,
    raw_reps: int = 10,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fill, measure, prune, drop: one cardinality's results."""
    bench = Bench(database_url, keys, days, log)
    try:
        log(f"history: {keys} keys per window, {days} days ({keys * days * 288:,} rows)")
        fill = bench.fill()
        queries = bench.measure(reps, raw_reps)
        dropped = bench.retention()
    finally:
        bench.close()
    return {"keys": keys, "days": days, "fill": fill, "queries": queries, "retention": dropped}

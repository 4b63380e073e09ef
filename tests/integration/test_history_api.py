"""GET /stats: the stats history from PostgreSQL, on real servers.

Rows reach the ``stats`` table either through the real path (POST /stats with
a FakeClock over several windows, then ``flush_once``) or, for large sets, by
INSERT straight into the test's schema. The expected answers are computed
here, in Python or with a plain SQL SELECT, and compared exactly: every
field of every row, every row exactly once across pages, rollups equal to
the sums of the 5-minute rows.
"""

from __future__ import annotations

import base64
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import astuple, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.postgres.pool import connection
from payload_stats.web.app import create_app
from tests.conftest import START, FakeClock, payload, write_rows
from tests.support.model import Model

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/x"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/9"

# The window holding START (2026-11-26T10:00:01Z) ends at 10:05:00.
FIRST_END = datetime(2026, 11, 26, 10, 5, tzinfo=timezone.utc)
LENGTH = timedelta(seconds=300)

# The history API does not depend on how Redis is sharded: tests that only
# INSERT rows run once, under one shard.
one_shard = pytest.mark.parametrize("shards", [1], ids=["1shard"])

Row = tuple  # (time, customer, content, cdn, p2p, sessions, payloads)


# --- helpers -----------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def share(cdn: int, p2p: int) -> float | None:
    return round(p2p / (cdn + p2p), 6) if cdn + p2p else None


def as_json(row: Row, columns: Sequence[str] = ("customer", "content")) -> dict[str, Any]:
    """The JSON object GET /stats must answer for ``row`` (a 5-minute window row;
    watch_ms 0 when the row has none)."""
    t, customer, content, cdn, p2p, sessions, payloads, *watch = row
    watch_ms = watch[0] if watch else 0
    out: dict[str, Any] = {"time": iso(t)}
    if "customer" in columns:
        out["customer"] = customer
    if "content" in columns:
        out["content"] = content
    out.update(
        cdn=cdn,
        p2p=p2p,
        sessions=sessions,
        payloads=payloads,
        watch_ms=watch_ms,
        avg_viewers=round(watch_ms / 300_000, 6),
        p2p_share=share(cdn, p2p),
    )
    return out


def insert(pool, rows: Iterable[Row]) -> None:
    """Rows into stats and its rollups, through the write path (rows and
    rollups must agree, as the flush keeps them)."""
    write_rows(pool, rows)


def select(pool, where: str = "TRUE", params: dict | None = None, order: str = "ASC") -> list[Row]:
    """The rows a plain SELECT returns, in the API's order."""
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT time, customer, content, cdn, p2p, sessions, payloads FROM stats "
            f"WHERE {where} ORDER BY time {order}, customer {order}, content {order}",
            params or {},
        )
        rows = cur.fetchall()
        conn.rollback()
    return rows


def get(client, **params: Any) -> dict[str, Any]:
    response = client.get("/stats", query_string=params)
    assert response.status_code == 200, response.get_json()
    assert response.is_json
    return response.get_json()


def walk(client, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every row of every page, following ``next``; and the number of pages."""
    rows: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        body = get(client, **query)
        pages += 1
        assert set(body) == {"rows", "next"}
        if "limit" in params:
            assert len(body["rows"]) <= int(params["limit"])
        rows.extend(body["rows"])
        cursor = body["next"]
        if cursor is None:
            return rows, pages
        assert body["rows"], "a page with a next cursor must not be empty"
        assert pages < 2_000, "pagination does not end"


def key(row: dict[str, Any]) -> tuple:
    return (row["time"], row.get("customer"), row.get("content"))


def dataset(
    seed: int, windows: int, customers: Sequence[str], contents: Sequence[str], density: float = 0.7
) -> list[Row]:
    """Sparse random 5-minute rows from FIRST_END on; some with no bytes at all."""
    rnd = random.Random(seed)
    rows = []
    for w in range(windows):
        t = FIRST_END + w * LENGTH
        for cu in customers:
            for co in contents:
                if rnd.random() > density:
                    continue
                if rnd.random() < 0.1:
                    cdn = p2p = 0
                else:
                    cdn, p2p = rnd.randrange(0, 10**9), rnd.randrange(0, 10**9)
                rows.append((t, cu, co, cdn, p2p, rnd.randrange(0, 50), rnd.randrange(1, 500)))
    return rows


def assert_invalid(response, *names: str) -> None:
    """A 400 invalid_parameter JSON error naming exactly ``names``."""
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert body["error"] == "invalid_parameter"
    assert set(body["fields"]) == set(names)
    for name in names:
        assert name in body["message"]
        assert body["fields"][name] and all(isinstance(m, str) for m in body["fields"][name])


def make_cursor(*items: Any) -> str:
    raw = json.dumps(list(items)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- the real path: POST, flush, GET -----------------------------------------


def test_rows_written_by_the_flush_are_served_exactly(client, redis, pool, config, clock):
    """Payloads over three windows, two customers and two contents, flushed,
    come back as one row per (window, customer, content) with exact sums."""
    model = Model.of(config)
    rnd = random.Random(4)
    n = 0
    for w in range(3):
        clock.now = START + w * 300 + 7
        for customer in ("acme", "beta"):
            for content in ("live/1", "movie-2"):
                for _ in range(1 + (w + len(customer) + len(content)) % 3):
                    n += 1
                    body = payload(
                        token=f"tok-{n}",
                        customer=customer,
                        content=content,
                        cdn=rnd.randrange(0, 10**6),
                        p2p=rnd.randrange(0, 10**6),
                        # every 4th payload continues an older session
                        sessionDuration=1200 if n % 4 else 3_600_000,
                    )
                    response = client.post("/stats", json=body)
                    assert response.status_code == 200, response.get_json()
                    assert response.get_json() == model.receive_all(clock.now, [body]).body()
    clock.now = START + 3 * 300 + 10  # every window closed, grace passed
    report = flush_once(redis, pool, config, clock)
    assert report.rows == 12
    expected = {
        # GET /stats serves cdn, p2p, sessions, payloads and watch_ms.
        (datetime.fromtimestamp(end, tz=timezone.utc), cu, co): astuple(row)[:5]
        for (end, cu, co), row in model.rows().items()
    }

    body = get(client)
    want = [as_json((t, cu, co, *v)) for (t, cu, co), v in sorted(expected.items())]
    assert body == {"rows": want, "next": None}
    assert body["rows"][0]["time"] == "2026-11-26T10:05:00Z"

    # Descending: the same rows, newest first.
    assert get(client, order="desc")["rows"] == want[::-1]
    # Filters, against the same Python account.
    assert get(client, customer="beta")["rows"] == [r for r in want if r["customer"] == "beta"]
    assert get(client, content="live/1", customer="acme")["rows"] == [
        r for r in want if (r["customer"], r["content"]) == ("acme", "live/1")
    ]
    assert get(client, **{"from": "2026-11-26T10:10:00Z"})["rows"] == want[4:]
    # A rollup of the flushed rows: per customer and day.
    daily: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for (_, customer, _), values in expected.items():
        daily[customer] = [a + b for a, b in zip(daily[customer], values, strict=True)]
    assert get(client, group_by="customer", bucket="1d")["rows"] == [
        {
            "time": "2026-11-26T00:00:00Z",
            "customer": cu,
            "cdn": cdn,
            "p2p": p2p,
            "sessions": sessions,
            "payloads": payloads,
            "watch_ms": watch_ms,
            "avg_viewers": round(watch_ms / 86_400_000, 6),
            "p2p_share": share(cdn, p2p),
        }
        for cu, (cdn, p2p, sessions, payloads, watch_ms) in sorted(daily.items())
    ]


def test_a_late_payload_merged_into_a_flushed_row_is_served_once(
    client, redis, pool, config, clock
):
    """A payload arriving after its window was flushed is added to the same row."""
    assert client.post("/stats", json=payload(token="a", cdn=10, p2p=30)).status_code == 200
    clock.now = START + 310
    flush_once(redis, pool, config, clock)
    clock.now = START + 1  # the late payload, back in the first window
    assert client.post("/stats", json=payload(token="b", cdn=5, p2p=0)).status_code == 200
    clock.now = START + 600
    flush_once(redis, pool, config, clock)
    assert get(client)["rows"] == [as_json((FIRST_END, "acme", "movie-1", 15, 30, 2, 2, 60000))]


# --- filters and order -------------------------------------------------------


@pytest.fixture
def hours(pool) -> list[Row]:
    """Two customers, two contents, one row per 5-minute window over 3 hours."""
    rows = dataset(
        seed=7, windows=36, customers=("acme", "beta"), contents=("live/1", "movie-2"), density=1.0
    )
    insert(pool, rows)
    return sorted(rows)


@one_shard
@pytest.mark.parametrize(
    ("params", "start", "end"),
    [
        # from is inclusive, to exclusive; both on the window end.
        (
            {"from": "2026-11-26T10:30:00Z", "to": "2026-11-26T11:00:00Z"},
            datetime(2026, 11, 26, 10, 30),
            datetime(2026, 11, 26, 11, 0),
        ),
        # Naive times are UTC.
        (
            {"from": "2026-11-26T10:30:00", "to": "2026-11-26T11:00:00"},
            datetime(2026, 11, 26, 10, 30),
            datetime(2026, 11, 26, 11, 0),
        ),
        # +02:00 is two hours ahead of UTC: 12:30+02:00 is 10:30Z.
        (
            {"from": "2026-11-26T12:30:00+02:00", "to": "2026-11-26T13:00:00+02:00"},
            datetime(2026, 11, 26, 10, 30),
            datetime(2026, 11, 26, 11, 0),
        ),
        ({"from": "2026-11-26T05:30:00-05:00"}, datetime(2026, 11, 26, 10, 30), None),
        ({"to": "2026-11-26T10:15:00.000001Z"}, None, datetime(2026, 11, 26, 10, 15, 0, 1)),
        (
            {"from": "2026-11-26T10:14:59.5Z", "to": "2026-11-26T10:20:00.5Z"},
            datetime(2026, 11, 26, 10, 14, 59, 500000),
            datetime(2026, 11, 26, 10, 20, 0, 500000),
        ),
        # A lone date is its midnight.
        (
            {"from": "2026-11-26", "to": "2026-11-27"},
            datetime(2026, 11, 26),
            datetime(2026, 11, 27),
        ),
        # from == to is an empty range, not an error.
        (
            {"from": "2026-11-26T10:30:00Z", "to": "2026-11-26T10:30:00Z"},
            datetime(2026, 11, 26, 10, 30),
            datetime(2026, 11, 26, 10, 30),
        ),
    ],
    ids=[
        "Z",
        "naive",
        "plus0200",
        "from-minus0500",
        "to-microsecond",
        "fractions",
        "dates",
        "empty",
    ],
)
def test_time_range_is_from_inclusive_to_exclusive(client, hours, params, start, end):
    start = start and start.replace(tzinfo=timezone.utc)
    end = end and end.replace(tzinfo=timezone.utc)
    want = [
        as_json(r)
        for r in hours
        if (start is None or r[0] >= start) and (end is None or r[0] < end)
    ]
    if start and end and start < end:
        assert want, "the case must select something"
    assert get(client, limit=1000, **params)["rows"] == want


@one_shard
def test_range_bounds_on_a_window_end(client, hours):
    """The row stamped exactly ``from`` is in; the one stamped exactly ``to`` is out."""
    rows = get(client, **{"from": "2026-11-26T10:30:00Z", "to": "2026-11-26T10:35:00Z"})["rows"]
    assert {r["time"] for r in rows} == {"2026-11-26T10:30:00Z"}
    assert len(rows) == 4


@one_shard
@pytest.mark.parametrize(
    "params",
    [
        {"customer": "acme"},
        {"content": "movie-2"},
        {"customer": "beta", "content": "live/1"},
        {"customer": "nobody"},
        {"customer": "acme", "from": "2026-11-26T11:00:00Z", "to": "2026-11-26T12:00:00+00:00"},
    ],
    ids=["customer", "content", "both", "unknown", "customer-and-range"],
)
def test_customer_and_content_filters_match_exactly(client, pool, hours, params):
    insert(
        pool,
        [
            (FIRST_END, "acm", "movie-2", 1, 1, 1, 1),  # prefixes must not match
            (FIRST_END, "acme ", "movie", 1, 1, 1, 1),
            (FIRST_END, "ACME", "MOVIE-2", 1, 1, 1, 1),
        ],
    )
    start = params.get("from") and datetime(2026, 11, 26, 11, tzinfo=timezone.utc)
    end = params.get("to") and datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    want = [
        as_json(r)
        for r in select(pool)
        if r[1] == params.get("customer", r[1])
        and r[2] == params.get("content", r[2])
        and (start is None or r[0] >= start)
        and (end is None or r[0] < end)
    ]
    body = get(client, limit=1000, **params)
    assert body == {"rows": want, "next": None}
    assert all(r["customer"] == params.get("customer", r["customer"]) for r in body["rows"])


@one_shard
def test_order_desc_is_the_exact_reverse(client, hours):
    asc = get(client, limit=1000)["rows"]
    desc = get(client, limit=1000, order="desc")["rows"]
    assert len(asc) == 144
    assert desc == asc[::-1]
    assert asc == [as_json(r) for r in hours]


@one_shard
def test_default_limit_is_100(client, hours):
    body = get(client)
    assert len(body["rows"]) == 100
    assert body["next"] is not None


@one_shard
def test_p2p_share(client, pool):
    insert(
        pool,
        [
            (FIRST_END, "a", "x", 0, 0, 1, 1),  # no bytes: no share
            (FIRST_END, "b", "x", 1, 2, 0, 1),
            (FIRST_END, "c", "x", 0, 7, 0, 1),
            (FIRST_END, "d", "x", 7, 0, 0, 1),
            (FIRST_END, "e", "x", 10**12, 10**12, 0, 1),
            (FIRST_END + LENGTH, "a", "x", 0, 0, 3, 2),
        ],
    )
    rows = get(client)["rows"]
    assert [(r["customer"], r["p2p_share"]) for r in rows] == [
        ("a", None),
        ("b", 0.666667),
        ("c", 1.0),
        ("d", 0.0),
        ("e", 0.5),
        ("a", None),
    ]
    assert all(r["cdn"] + r["p2p"] > 0 or r["p2p_share"] is None for r in rows)
    # In a rollup the share is that of the sums, and still null on no bytes.
    rolled = get(client, group_by="customer", bucket="1h")["rows"]
    assert [(r["customer"], r["cdn"], r["p2p"], r["p2p_share"]) for r in rolled] == [
        ("a", 0, 0, None),
        ("b", 1, 2, 0.666667),
        ("c", 0, 7, 1.0),
        ("d", 7, 0, 0.0),
        ("e", 10**12, 10**12, 0.5),
    ]
    assert rolled[0]["sessions"] == 4 and rolled[0]["payloads"] == 3


@one_shard
def test_empty_table(client, pool):
    assert get(client) == {"rows": [], "next": None}
    assert get(client, group_by="customer,content", bucket="1d") == {"rows": [], "next": None}


# --- keyset pagination -------------------------------------------------------

# Names that trip naive cursors: prefixes of each other, separators, case,
# spaces, non-ASCII, and digits that sort before letters.
AWKWARD = ("a", "A", "a b", "a:b", "a:", "ab", "Ä", "z" * 40, "0", "é")


@pytest.fixture
def many(pool) -> list[Row]:
    """About 1,000 rows: 30 windows x awkward customers x 5 contents (sparse)."""
    rows = dataset(
        seed=11,
        windows=30,
        customers=AWKWARD,
        contents=("c1", "C1", "c1:x", "live/ch 1", "ü"),
        density=0.7,
    )
    insert(pool, rows)
    assert 900 < len(rows) < 1200
    return rows


@one_shard
@pytest.mark.parametrize("limit", [1, 2, 7, 100, 999, 1000])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_yield_every_row_exactly_once(client, pool, many, limit, order):
    params: dict[str, Any] = {"limit": limit, "order": order}
    where, sql_params = "TRUE", {}
    if limit <= 2:
        # One request per row: a filtered subset keeps it quick.
        params["customer"] = "a"
        where, sql_params = "customer = %(c)s", {"c": "a"}
    want = [as_json(r) for r in select(pool, where, sql_params, order.upper())]
    rows, pages = walk(client, **params)
    keys = [key(r) for r in rows]
    assert len(keys) == len(set(keys)), "a row was repeated"
    assert rows == want
    # No empty trailing page: a page of exactly the last ``limit`` rows has no next.
    assert pages == max(1, -(-len(want) // limit))


@one_shard
def test_last_full_page_has_no_next(client, pool):
    """Exactly ``limit`` rows left: that page is the last; no empty page follows."""
    insert(pool, [(FIRST_END + i * LENGTH, "acme", "x", i, 0, 0, 1) for i in range(6)])
    first = get(client, limit=3)
    assert first["next"] is not None
    second = get(client, limit=3, cursor=first["next"])
    assert [r["cdn"] for r in second["rows"]] == [3, 4, 5]
    assert second["next"] is None


@one_shard
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_with_filters(client, pool, many, order):
    params = {
        "content": "c1:x",
        "from": "2026-11-26T10:30:00Z",
        "to": "2026-11-26T12:00:00Z",
        "order": order,
        "limit": 5,
    }
    want = select(
        pool,
        "content = %(c)s AND time >= %(f)s AND time < %(t)s",
        {"c": "c1:x", "f": "2026-11-26T10:30:00Z", "t": "2026-11-26T12:00:00Z"},
        order.upper(),
    )
    assert len(want) > 10
    rows, _ = walk(client, **params)
    assert rows == [as_json(r) for r in want]


@one_shard
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_while_rows_arrive(client, pool, many, order):
    """Rows inserted (and rows updated by a late flush) between pages are never
    repeated; rows ahead of the cursor are served, rows behind it are not."""
    before = {key(as_json(r)) for r in many}
    newest, oldest = max(r[0] for r in many), min(r[0] for r in many)
    added_ahead = set()
    seen: list[dict[str, Any]] = []
    cursor = None
    page = 0
    while True:
        query: dict[str, Any] = {"limit": 37, "order": order}
        if cursor:
            query["cursor"] = cursor
        body = get(client, **query)
        seen.extend(body["rows"])
        cursor = body["next"]
        if cursor is None:
            break
        page += 1
        last = body["rows"][-1]
        ahead = newest + page * LENGTH if order == "asc" else oldest - page * LENGTH
        behind = oldest - page * LENGTH if order == "asc" else newest + page * LENGTH
        insert(
            pool,
            [
                (ahead, "new", "row", page, 0, 0, 1),
                (behind, "old", "row", page, 0, 0, 1),
                # Same time as the last row served, sorting right after or before it.
                (
                    datetime.fromisoformat(last["time"]),
                    last["customer"] + "\x7f",
                    "tie",
                    page,
                    0,
                    0,
                    1,
                ),
            ],
        )
        added_ahead.add((iso(ahead), "new", "row"))
        if order == "asc":
            added_ahead.add((last["time"], last["customer"] + "\x7f", "tie"))
        # A late flush adds to a row already served: it must not come back.
        with connection(pool) as conn, conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE stats SET cdn = cdn + 1 WHERE time = %s AND customer = %s AND content = %s",
                (last["time"], last["customer"], last["content"]),
            )
        assert page < 200
    keys = [key(r) for r in seen]
    assert len(keys) == len(set(keys)), "a row was served twice"
    got = set(keys)
    assert before <= got, "a row present from the start was skipped"
    assert {k for k in got - before if k[2] != "tie"} == {k for k in added_ahead if k[2] != "tie"}
    if order == "asc":
        assert {k for k in got if k[2] == "tie"} == {k for k in added_ahead if k[2] == "tie"}
    else:
        # In descending order "\x7f"-suffixed names sort before the cursor row: behind it.
        assert not {k for k in got if k[2] == "tie"}


# --- rollups -----------------------------------------------------------------

BUCKET_SECONDS = {"5m": 300, "1h": 3600, "1d": 86400}


def rollup(rows: Iterable[Row], group_by: str | None, bucket: str | None) -> dict[tuple, list]:
    """The expected rollup, from the 5-minute rows: {(time, customer?, content?): sums}.

    A bucket holds the rows whose time (the window end) falls in
    ``[bucket start, bucket start + size)``, UTC, and is stamped with its start.
    """
    columns = group_by.split(",") if group_by else ["customer", "content"]
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for t, cu, co, cdn, p2p, sessions, payloads in rows:
        if bucket:
            size = BUCKET_SECONDS[bucket]
            t = datetime.fromtimestamp(int(t.timestamp()) // size * size, tz=timezone.utc)
        k = (iso(t), cu if "customer" in columns else None, co if "content" in columns else None)
        total = sums[k]
        for i, v in enumerate((cdn, p2p, sessions, payloads)):
            total[i] += v
    return sums


@pytest.fixture
def two_days(pool) -> list[Row]:
    """Rows over 2 days and a bit, crossing hour and day boundaries (UTC)."""
    start = datetime(2026, 11, 25, 22, 0, tzinfo=timezone.utc)
    rnd = random.Random(3)
    rows = []
    for w in range(0, 12 * 52, 1):
        t = start + w * LENGTH
        for cu in ("acme", "beta", "gamma"):
            for co in ("live1", "vod22"):
                if rnd.random() < 0.35:
                    cdn, p2p = (
                        (0, 0)
                        if rnd.random() < 0.05
                        else (rnd.randrange(10**10), rnd.randrange(10**10))
                    )
                    rows.append((t, cu, co, cdn, p2p, rnd.randrange(5), rnd.randrange(1, 90)))
    insert(pool, rows)
    return rows


@one_shard
@pytest.mark.parametrize(
    ("group_by", "bucket"),
    [
        (g, b)
        for g in (None, "customer", "content", "customer,content")
        for b in (None, "5m", "1h", "1d")
        if g or b
    ],
)
def test_rollups_equal_the_sums_of_the_5_minute_rows(client, two_days, group_by, bucket):
    params = {k: v for k, v in (("group_by", group_by), ("bucket", bucket)) if v}
    rows, _ = walk(client, limit=250, **params)
    columns = group_by.split(",") if group_by else ["customer", "content"]
    for r in rows:
        assert set(r) == {
            "time",
            *columns,
            *("cdn", "p2p", "sessions", "payloads", "watch_ms", "avg_viewers", "p2p_share"),
        }
    got = {key(r): r for r in rows}
    assert len(got) == len(rows), "a group was repeated across pages"
    want = rollup(two_days, group_by, bucket)
    assert set(got) == set(want)
    for k, (cdn, p2p, sessions, payloads) in want.items():
        assert got[k] == {
            "time": k[0],
            **({"customer": k[1]} if k[1] is not None else {}),
            **({"content": k[2]} if k[2] is not None else {}),
            "cdn": cdn,
            "p2p": p2p,
            "sessions": sessions,
            "payloads": payloads,
            "watch_ms": 0,
            "avg_viewers": 0.0,
            "p2p_share": share(cdn, p2p),
        }
    # Ordered by time, then customer, then content (plain ASCII names: code point order).
    assert [key(r) for r in rows] == sorted(got, key=lambda k: (k[0], k[1] or "", k[2] or ""))
    # Totals are preserved whatever the grouping.
    assert sum(r["cdn"] for r in rows) == sum(r[3] for r in two_days)
    assert sum(r["payloads"] for r in rows) == sum(r[6] for r in two_days)


@one_shard
def test_rollup_bucket_stamps_and_boundaries(client, pool):
    """Buckets are UTC and stamped with their start; a row is in the bucket of its time."""
    insert(
        pool,
        [
            (datetime(2026, 11, 26, 23, 55, tzinfo=timezone.utc), "a", "x", 1, 0, 0, 1),
            (datetime(2026, 11, 27, 0, 0, tzinfo=timezone.utc), "a", "x", 10, 0, 0, 1),
            (datetime(2026, 11, 27, 0, 5, tzinfo=timezone.utc), "a", "y", 100, 0, 0, 1),
            (datetime(2026, 11, 27, 0, 55, tzinfo=timezone.utc), "a", "y", 1000, 0, 0, 1),
            (datetime(2026, 11, 27, 1, 0, tzinfo=timezone.utc), "a", "x", 10000, 0, 0, 1),
        ],
    )
    hourly = get(client, group_by="customer", bucket="1h")["rows"]
    assert [(r["time"], r["cdn"]) for r in hourly] == [
        ("2026-11-26T23:00:00Z", 1),
        ("2026-11-27T00:00:00Z", 1110),
        ("2026-11-27T01:00:00Z", 10000),
    ]
    daily = get(client, group_by="content", bucket="1d")["rows"]
    assert daily == [
        {
            "time": "2026-11-26T00:00:00Z",
            "content": "x",
            "cdn": 1,
            "p2p": 0,
            "sessions": 0,
            "payloads": 1,
            "watch_ms": 0,
            "avg_viewers": 0.0,
            "p2p_share": 0.0,
        },
        {
            "time": "2026-11-27T00:00:00Z",
            "content": "x",
            "cdn": 10010,
            "p2p": 0,
            "sessions": 0,
            "payloads": 2,
            "watch_ms": 0,
            "avg_viewers": 0.0,
            "p2p_share": 0.0,
        },
        {
            "time": "2026-11-27T00:00:00Z",
            "content": "y",
            "cdn": 1100,
            "p2p": 0,
            "sessions": 0,
            "payloads": 2,
            "watch_ms": 0,
            "avg_viewers": 0.0,
            "p2p_share": 0.0,
        },
    ]
    # From/to still select by the 5-minute rows' time, before rolling up.
    ranged = get(
        client,
        group_by="customer",
        bucket="1d",
        **{"from": "2026-11-27T00:05:00Z", "to": "2026-11-27T01:00:00Z"},
    )["rows"]
    assert [(r["time"], r["cdn"], r["payloads"]) for r in ranged] == [
        ("2026-11-27T00:00:00Z", 1100, 2)
    ]


@one_shard
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_rollup_pages_with_filters(client, pool, two_days, order):
    params = {
        "group_by": "content",
        "bucket": "1h",
        "customer": "beta",
        "order": order,
        "from": "2026-11-26T03:00:00+01:00",
        "limit": 4,
    }
    rows, pages = walk(client, **params)
    start = datetime(2026, 11, 26, 2, tzinfo=timezone.utc)
    want = rollup([r for r in two_days if r[1] == "beta" and r[0] >= start], "content", "1h")
    assert pages > 3
    assert [key(r) for r in rows] == sorted(want, reverse=order == "desc")
    assert {key(r): [r["cdn"], r["p2p"], r["sessions"], r["payloads"]] for r in rows} == want


# --- bad parameters ----------------------------------------------------------


@one_shard
@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"limit": "0"}, ["limit"]),
        ({"limit": "1001"}, ["limit"]),
        ({"limit": "abc"}, ["limit"]),
        ({"limit": "-1"}, ["limit"]),
        ({"limit": "1.5"}, ["limit"]),
        ({"limit": ""}, ["limit"]),
        ({"limit": "²"}, ["limit"]),  # str.isdigit() is true, int() refuses it
        ({"from": "yesterday"}, ["from"]),
        ({"from": "2026-13-01T00:00:00Z"}, ["from"]),
        ({"to": "2026-11-26T25:00:00Z"}, ["to"]),
        ({"from": "2026-11-26T10:00:00+25:00"}, ["from"]),
        ({"from": "2026-11-26T11:00:00Z", "to": "2026-11-26T10:00:00Z"}, ["from"]),
        ({"from": "2026-11-26T12:00:01+02:00", "to": "2026-11-26T10:00:00Z"}, ["from"]),
        ({"order": "up"}, ["order"]),
        ({"group_by": "time"}, ["group_by"]),
        ({"bucket": "2h"}, ["bucket"]),
        (
            {"limit": "0", "from": "x", "group_by": "y", "bucket": "z", "order": "sideways"},
            ["limit", "from", "group_by", "bucket", "order"],
        ),
    ],
    ids=lambda v: json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else None,
)
def test_bad_parameters_answer_400_naming_them(client, pool, params, names):
    assert_invalid(client.get("/stats", query_string=params), *names)


@one_shard
@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "%%%",
        "eyJhIjox",  # truncated JSON
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
        make_cursor("2026-11-26T10:05:00+00:00", "acme"),  # too short
        make_cursor({"a": 1}),
        make_cursor(5),
        make_cursor("not a time", "acme", "x", None, None),
        make_cursor("2026-11-26T10:05:00+00:00", 1, "x", None, None),
        make_cursor(None, "acme", "x", None, None),
        make_cursor(1795687500, "acme", "x", None, None),  # a number where the time goes
        make_cursor(["2026"], "acme", "x", None, None),
    ],
    ids=[
        "word",
        "percent",
        "truncated-json",
        "binary",
        "short-list",
        "object",
        "number",
        "bad-time",
        "int-customer",
        "null-time",
        "number-time",
        "list-time",
    ],
)
def test_garbage_cursor_answers_400(client, pool, cursor):
    assert_invalid(client.get("/stats", query_string={"cursor": cursor}), "cursor")


@one_shard
@pytest.mark.parametrize(
    ("made_with", "used_with"),
    [
        ({}, {"group_by": "customer"}),
        ({"group_by": "customer"}, {}),
        ({"group_by": "customer"}, {"group_by": "content"}),
        ({"group_by": "customer", "bucket": "1h"}, {"group_by": "customer", "bucket": "1d"}),
        ({"group_by": "customer,content"}, {"bucket": "5m"}),
    ],
)
def test_cursor_from_another_rollup_answers_400(client, pool, made_with, used_with):
    insert(
        pool, [(FIRST_END + i * LENGTH, f"c{i % 3}", f"x{i % 2}", 1, 1, 1, 1) for i in range(12)]
    )
    cursor = get(client, limit=1, **made_with)["next"]
    assert cursor
    assert_invalid(client.get("/stats", query_string={"cursor": cursor, **used_with}), "cursor")
    # The same cursor still works with the query that made it.
    assert get(client, limit=1, cursor=cursor, **made_with)["rows"]


@one_shard
@pytest.mark.parametrize("name", ["customer", "content"])
def test_a_nul_character_in_a_filter_is_not_a_server_error(client, pool, name):
    """PostgreSQL text cannot hold NUL; no row can match, and nothing a client
    sends may produce a 5xx: an empty page or a 400 naming the parameter."""
    response = client.get("/stats", query_string={name: "ac\x00me"})
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    if response.status_code == 200:
        assert response.get_json() == {"rows": [], "next": None}
    else:
        assert_invalid(response, name)


# --- access tokens -----------------------------------------------------------


@pytest.fixture
def guarded(config: Config, clock: FakeClock):
    """A client of an app with STATS_API_TOKEN=t (STATS_INGEST_TOKEN unset)."""
    return create_app(replace(config, api_token="t"), clock=clock).test_client()


def assert_unauthorized(response) -> None:
    assert response.status_code == 401
    assert response.is_json
    body = response.get_json()
    assert body["error"] == "unauthorized"
    assert body["message"]
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")


@one_shard
@pytest.mark.parametrize("path", ["/stats", "/stats/live", "/metrics"])
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Bearer", "Bearer ", "Basic dDp0", "t", "Bearer tt", "Bearer T"],
)
def test_read_endpoints_refuse_a_missing_or_wrong_token(guarded, pool, path, header):
    headers = {"Authorization": header} if header is not None else {}
    assert_unauthorized(guarded.get(path, headers=headers))


@one_shard
@pytest.mark.parametrize("path", ["/stats", "/stats/live", "/metrics"])
@pytest.mark.parametrize("header", ["Bearer t", "bearer t"])
def test_read_endpoints_accept_the_token(guarded, pool, path, header):
    response = guarded.get(path, headers={"Authorization": header})
    assert response.status_code == 200, response.get_data(as_text=True)


@one_shard
def test_bad_parameters_are_not_answered_before_authentication(guarded, pool):
    assert_unauthorized(guarded.get("/stats", query_string={"limit": "0"}))


@one_shard
def test_read_endpoints_are_open_without_a_token(client, pool):
    for path in ("/stats", "/stats/live", "/metrics"):
        assert client.get(path).status_code == 200, path


@one_shard
def test_with_the_token_the_rows_are_served(guarded, pool, redis, config, clock):
    insert(pool, [(FIRST_END, "acme", "x", 3, 1, 1, 1)])
    body = guarded.get("/stats", headers={"Authorization": "Bearer t"}).get_json()
    assert body == {"rows": [as_json((FIRST_END, "acme", "x", 3, 1, 1, 1))], "next": None}


def test_post_stays_open_when_only_the_api_token_is_set(guarded, redis, config):
    response = guarded.post("/stats", json=payload())
    assert response.status_code == 200
    assert response.get_json() == {"accepted": 1, "duplicates": 0}


def test_post_needs_the_ingest_token_when_set(config, clock, redis, pool):
    client = create_app(replace(config, api_token="t", ingest_token="i"), clock=clock).test_client()
    for header in (None, "Bearer wrong", "Bearer t"):  # the read token is not the ingest one
        headers = {"Authorization": header} if header else {}
        assert_unauthorized(client.post("/stats", json=payload(), headers=headers))
        assert_unauthorized(client.post("/stats/batch", json=[payload()], headers=headers))
    # Nothing was counted by the refused requests.
    live = client.get("/stats/live", headers={"Authorization": "Bearer t"}).get_json()
    assert live["rows"] == []
    response = client.post("/stats", json=payload(), headers={"Authorization": "Bearer i"})
    assert response.status_code == 200
    assert response.get_json() == {"accepted": 1, "duplicates": 0}
    # The ingest token does not open the read endpoints.
    assert_unauthorized(client.get("/stats", headers={"Authorization": "Bearer i"}))
    live = client.get("/stats/live", headers={"Authorization": "Bearer t"}).get_json()["rows"]
    assert [(r["cdn"], r["p2p"], r["payloads"]) for r in live] == [(250, 100, 1)]


@one_shard
@pytest.mark.parametrize("path", ["/healthz", "/docs", "/openapi.json", "/readyz"])
def test_health_and_docs_stay_open(config, clock, pool, path):
    client = create_app(replace(config, api_token="t", ingest_token="i"), clock=clock).test_client()
    assert client.get(path).status_code == 200


# --- servers down ------------------------------------------------------------


@one_shard
def test_postgres_down_answers_503_json(config, clock):
    app = create_app(replace(config, database_url=UNREACHABLE_DATABASE_URL), clock=clock)
    client = app.test_client()
    response = client.get("/stats")
    assert response.status_code == 503
    assert response.is_json
    body = response.get_json()
    assert body["error"] == "unavailable"
    assert body["message"]
    assert response.headers.get("Retry-After")
    # Parameters are still checked first: a bad one is the client's fault.
    assert_invalid(client.get("/stats", query_string={"limit": "0"}), "limit")
    # Ingest does not need PostgreSQL.
    assert client.post("/stats", json=payload()).status_code == 200

    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["error"] == "not_ready"
    assert "postgres" in body["message"]
    assert "redis" not in body["message"]
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["postgres"] == "down"
    assert client.get("/healthz").status_code == 200


@one_shard
def test_redis_down_makes_readyz_503(config, clock, pool):
    client = create_app(replace(config, redis_url=UNREACHABLE_REDIS_URL), clock=clock).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.is_json
    body = ready.get_json()
    assert body["error"] == "not_ready"
    assert "redis" in body["message"]
    assert "postgres" not in body["message"]
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"] == "down"
    # History does not need Redis.
    insert(pool, [(FIRST_END, "acme", "x", 3, 1, 1, 1)])
    assert len(client.get("/stats").get_json()["rows"]) == 1
    assert client.get("/healthz").status_code == 200


@one_shard
def test_both_down_names_both(config, clock):
    client = create_app(
        replace(config, redis_url=UNREACHABLE_REDIS_URL, database_url=UNREACHABLE_DATABASE_URL),
        clock=clock,
    ).test_client()
    body = client.get("/readyz").get_json()
    assert "redis" in body["message"] and "postgres" in body["message"]
    assert {name for name, state in body["checks"].items() if state.startswith("down")} == {
        "redis",
        "postgres",
    }


@one_shard
def test_ready_when_both_answer(client, pool):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {
        "redis": "ok",
        "redis_eviction": "ok",
        "redis_memory": "ok",
        "postgres": "ok",
    }
    assert client.get("/healthz").get_json() == {"status": "ok"}

"""History in and out: ``payload-stats import``, CSV from GET /stats and
``payload-stats export``, and calendar-month buckets (bucket=1mo), on the real
PostgreSQL.

Imports are checked against the file's own rows, summed in Python; CSV
answers against the JSON pages of the same query; month buckets against sums
computed here from the rows, month by month (UTC).
"""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from payload_stats.ops import importer
from payload_stats.postgres import rollups
from payload_stats.postgres.pool import connection
from tests.conftest import START, write_rows
from tests.integration.test_history_api import get, walk
from tests.integration.test_rollups import assert_rollups_exact, query
from tests.support.servers import ROOT, cli_environment

NOW = datetime.fromtimestamp(START, tz=timezone.utc)  # 2026-11-26T10:00:01Z
# Commands run as subprocesses check times against the real clock: an hour
# that ended two days ago.
RECENT = datetime.fromtimestamp((time.time() // 3600 - 48) * 3600, tz=timezone.utc)
R = RECENT.strftime("%Y-%m-%dT%H")  # R + ":05:00Z" is a window end
HEADER = "time,customer,content,cdn,p2p,sessions,payloads,watch_ms\n"


def run(config, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "payload_stats", *args],
        env=cli_environment(config),
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def stats(pool) -> dict[tuple, tuple]:
    return {
        (t.astimezone(timezone.utc), cu, co): tuple(v)
        for t, cu, co, *v in query(
            pool,
            "SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms FROM stats",
        )
    }


def ledger(pool) -> list[str]:
    return sorted(r[0] for r in query(pool, "SELECT snapshot_id FROM flush_ledger"))


def history_csv(seed: int, lines: int, start: datetime, watch: bool = True) -> tuple[str, dict]:
    """A CSV file of ``lines`` rows over 5-minute windows before ``start``, and
    the sums it must add, by (time, customer, content); some keys repeat."""
    rnd = random.Random(seed)
    out = io.StringIO()
    out.write(HEADER if watch else HEADER.replace(",watch_ms", ""))
    want: dict[tuple, list[int]] = defaultdict(lambda: [0] * 5)
    for i in range(lines):
        t = start - timedelta(minutes=5 * (i // 7))
        cu, co = f"cust-{rnd.randrange(3)}", rnd.choice(["live/1", 'vod, "special"', "x"])
        values = [rnd.randrange(10**12), rnd.randrange(10**12), rnd.randrange(5), 1 + i % 9]
        values.append(rnd.randrange(10**7) if watch else 0)
        cells = [t.strftime("%Y-%m-%dT%H:%M:%SZ"), cu, co, *map(str, values[:4])]
        if watch:
            cells.append(str(values[4]))
        csv.writer(out, lineterminator="\n").writerow(cells)
        want[(t, cu, co)] = [a + b for a, b in zip(want[(t, cu, co)], values, strict=True)]
    return out.getvalue(), {k: tuple(v) for k, v in want.items()}


# --- import --------------------------------------------------------------------------


def test_import_twice_adds_once(config, pool, tmp_path):
    text, want = history_csv(1, 500, RECENT)
    path = tmp_path / "history.csv"
    path.write_text(text)
    first = run(config, "import", str(path))
    assert first.returncode == 0, first.stderr
    assert b"imported 500 row(s) in 1 chunk(s)" in first.stdout
    assert first.stderr == b""  # no progress when stderr is not a terminal
    assert stats(pool) == want
    assert_rollups_exact(pool)
    ids = ledger(pool)
    assert len(ids) == 1 and ids[0].startswith("import:")

    again = run(config, "import", "-", stdin=text.encode())  # the same bytes, from stdin
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(b"already imported (sha256 ")
    assert stats(pool) == want
    assert ledger(pool) == ids


def test_import_without_watch_ms_and_onto_existing_rows(config, pool):
    end = datetime(2026, 11, 25, 10, 5, tzinfo=timezone.utc)
    write_rows(pool, [(end, "acme", "x", 1, 2, 3, 4, 5)])
    text = "time,customer,content,cdn,p2p,sessions,payloads\n"
    text += "2026-11-25T10:05:00Z,acme,x,10,20,30,40\n"  # adds into the existing row
    text += "2026-11-25 10:10:00+00:00,acme,x,1,1,1,1\n"  # a space and +00:00 also read as UTC
    text += "2026-11-25T10:10:00.000+00,acme,x,1,1,1,1\n"  # the same row again: sums
    report = importer.import_file(pool, config, io.BytesIO(text.encode()), now=START)
    assert (report.rows, report.written_rows, report.isolated) == (3, 3, 0)
    assert stats(pool) == {
        (end, "acme", "x"): (11, 22, 33, 44, 5),
        (end + timedelta(minutes=5), "acme", "x"): (2, 2, 2, 2, 0),
    }
    assert_rollups_exact(pool)


FUTURE = (RECENT + timedelta(days=3)).strftime("%Y-%m-%dT%H:00:00Z")
OLD = (RECENT - timedelta(days=370)).strftime("%Y-%m-%dT%H:00:00Z")
BAD = [
    (f"{R}:05:00,acme,x,1,1,1,1,0", "not an ISO 8601 UTC time"),  # no UTC designator
    (f"{R}:05:00+02:00,acme,x,1,1,1,1,0", "not an ISO 8601 UTC time"),
    (f"{R}:06:00Z,acme,x,1,1,1,1,0", "is not a window end"),
    ("2026-11-31T10:05:00Z,acme,x,1,1,1,1,0", "day is out of range"),
    (f"{FUTURE},acme,x,1,1,1,1,0", "is in the future"),
    (f"{OLD},acme,x,1,1,1,1,0", "before the retention cut"),
    (f"{R}:05:00Z,,x,1,1,1,1,0", "customer: must be 1 to 256 characters"),
    (f"{R}:05:00Z,acme,\x07bell,1,1,1,1,0", "content: must be printable"),
    (f"{R}:05:00Z,acme,x,-1,1,1,1,0", "cdn: '-1' is not an integer"),
    (f"{R}:05:00Z,acme,x,1,1.5,1,1,0", "p2p: '1.5' is not an integer"),
    (f"{R}:05:00Z,acme,x,1,1,9223372036854775808,1,0", "sessions: '9223372036854775808'"),
    (f"{R}:05:00Z,acme,x,1,1,1,0,0", "payloads: a row counts at least one payload"),
    (f"{R}:05:00Z,acme,x,1,1,1,1", "7 fields, expected 8"),
    (f'{R}:05:00Z,"acme,x,1,1,1,1,0', "not a CSV record"),
]


@pytest.mark.parametrize(("line", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_line_rejects_the_whole_file_naming_its_line(config, pool, line, message):
    good = f"{R}:00:00Z,acme,x,1,1,1,1,0\n"
    text = HEADER + good * 3 + line + "\n" + good
    result = run(config, "import", "-", stdin=text.encode())
    assert result.returncode == 4
    err = result.stderr.decode()
    assert err.startswith("line 5: "), err
    assert message in err.splitlines()[0]
    assert err.splitlines()[-1] == "payload-stats: error: 1 bad line(s); nothing was imported"
    assert stats(pool) == {}
    assert ledger(pool) == []
    assert query(pool, "SELECT count(*) FROM stats_hourly") == [(0,)]


def test_every_bad_line_is_reported_and_the_header_checked(config, pool):
    # Minutes 00 to 09: only :00 (line 2) and :05 (line 7) end a window.
    rows = [HEADER.strip()] + [f"{R}:0{i}:00Z,a,x,1,1,1,1,0" for i in range(10)]
    result = run(config, "import", "-", stdin=("\n".join(rows) + "\n").encode())
    lines = result.stderr.decode().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"line {n}" for n in (3, 4, 5, 6, 8, 9, 10, 11)
    ]
    assert lines[-1] == "payload-stats: error: 8 bad line(s); nothing was imported"
    for header in ("time,customer,content,cdn,p2p,sessions", "time,content,customer,cdn,p2p,"
                   "sessions,payloads", ""):  # fmt: skip
        result = run(config, "import", "-", stdin=f"{header}\n".encode())
        assert result.returncode == 4, header
        assert result.stderr.decode().startswith("line 1: "), result.stderr


def test_an_interrupted_import_completes_once_when_run_again(config, pool, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK_ROWS", 40)
    text, want = history_csv(2, 130, NOW.replace(minute=0, second=0) - timedelta(hours=5))
    real_upsert = importer.writes.upsert
    calls = []

    def dies_on_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_upsert(*args, **kwargs)

    monkeypatch.setattr(importer.writes, "upsert", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        importer.import_file(pool, config, io.BytesIO(text.encode()), now=START)
    assert len(ledger(pool)) == 2
    monkeypatch.setattr(importer.writes, "upsert", real_upsert)
    report = importer.import_file(pool, config, io.BytesIO(text.encode()), now=START)
    assert (report.chunks, report.written_chunks, report.written_rows) == (4, 2, 50)
    assert stats(pool) == want
    assert_rollups_exact(pool)
    again = importer.import_file(pool, config, io.BytesIO(text.encode()), now=START)
    assert again.already


def test_import_creates_the_partitions_of_a_year(config, pool):
    start = NOW.replace(hour=0, minute=0, second=0) - timedelta(days=364)
    lines = [HEADER.strip()]
    lines += [f"{start + timedelta(days=d):%Y-%m-%dT%H:%M:%SZ},a,x,1,0,0,1,{d}" for d in range(365)]
    report = importer.import_file(pool, config, io.BytesIO("\n".join(lines).encode()), now=START)
    assert report.written_rows == 365
    assert query(pool, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'stats'::regclass") == [
        (365,)
    ]
    assert rollups.verify(pool, start, NOW) == []


# --- CSV out -------------------------------------------------------------------------


@pytest.fixture
def names(pool):
    """Rows whose names need CSV quoting, across months."""
    base = datetime(2026, 9, 30, 23, 55, tzinfo=timezone.utc)
    rows = []
    for w in range(0, 12 * 24 * 70, 7):  # 70 days, every 35 minutes
        t = base + timedelta(minutes=5 * w)
        for cu in ("acme, inc.", 'say "hi"', "plain"):
            for co in ("a,b", "c"):
                rows.append((t, cu, co, w, w % 7, 1, 2, 60_000 * (w % 3)))
    write_rows(pool, rows)
    return rows


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"group_by": "customer", "bucket": "1mo"},
        {"bucket": "1d", "customer": "acme, inc.", "order": "desc"},
        {"group_by": "content", "bucket": "1h", "from": "2026-10-03T10:17:00Z"},
        {"bucket": "5m", "to": "2026-10-09T00:00:00Z"},
    ],
    ids=["rows", "month-by-customer", "days-desc", "hours-from", "5m"],
)
def test_csv_holds_the_same_rows_as_the_json_pages(client, names, params):
    pages, _ = walk(client, limit=1000, **params)
    response = client.get("/stats", query_string={**params, "format": "csv"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.is_streamed
    text = response.get_data(as_text=True)
    assert "\r\n" in text
    table = list(csv.reader(io.StringIO(text, newline="")))
    header, body = table[0], table[1:]
    assert header == list(pages[0]) if pages else True
    assert len(body) == len(pages)
    for line, row in zip(body, pages, strict=True):
        *exact, viewers, share = line
        assert exact == [str(v) for v in list(row.values())[:-2]]
        assert float(viewers) == row["avg_viewers"]
        assert (float(share) if share else None) == row["p2p_share"]


def test_csv_quotes_commas_and_quotes(client, names):
    text = client.get("/stats?format=csv&limit=3").get_data(as_text=True)
    assert text.startswith(
        "time,customer,content,cdn,p2p,sessions,payloads,watch_ms,avg_viewers,p2p_share\r\n"
    )
    assert '2026-09-30T23:55:00Z,"acme, inc.","a,b",0,0,1,2,0,0,\r\n' in text
    assert '"say ""hi""",c,' in text


def test_csv_by_accept_header_and_json_by_default(client, names):
    assert client.get("/stats", headers={"Accept": "text/csv"}).mimetype == "text/csv"
    assert client.get("/stats", headers={"Accept": "*/*"}).mimetype == "application/json"
    assert client.get("/stats").mimetype == "application/json"
    both = {"Accept": "text/csv;q=0.5, application/json"}
    assert client.get("/stats", headers=both).mimetype == "application/json"
    forced = client.get("/stats?format=json", headers={"Accept": "text/csv"})
    assert forced.mimetype == "application/json"
    assert client.get("/stats?format=xml").status_code == 400


def test_csv_streams_page_by_page(client, names, monkeypatch):
    """The answer is produced a page at a time: the rows are never all in memory."""
    from payload_stats.query import history

    pages_read = []
    real_page = history.page

    def counting_page(conn, query, limit):
        rows = real_page(conn, query, limit)
        pages_read.append(len(rows))
        return rows

    monkeypatch.setattr(history, "page", counting_page)
    response = client.get("/stats?format=csv")
    chunks = iter(response.response)
    next(chunks)  # the header
    assert len(pages_read) == 1, "only the first page is read before the answer starts"
    rest = list(chunks)
    assert len(rest) == len(names) // 1000 + 1
    assert pages_read[:-1] == [1000] * (len(pages_read) - 1)
    assert sum(pages_read) == len(names)


def test_the_export_command_writes_what_the_api_answers(client, config, names):
    api = client.get(
        "/stats?format=csv&bucket=1mo&group_by=customer&from=2026-10-01&to=2026-12-01"
    ).get_data()
    result = run(
        config,
        "export",
        *("--from", "2026-10-01", "--to", "2026-12-01", "--bucket", "1mo"),
        *("--group-by", "customer"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == api
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "time,customer,cdn,p2p,sessions,payloads,watch_ms,avg_viewers,p2p_share"
    assert [line.split(",")[0] for line in lines[1:]] == ["2026-10-01T00:00:00Z"] * 3 + [
        "2026-11-01T00:00:00Z"
    ] * 3


# --- calendar months -----------------------------------------------------------------


def month_sums(rows, start=None, end=None) -> dict[tuple, list[int]]:
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * 5)
    for t, cu, _co, *values in rows:
        if (start and t < start) or (end and t >= end):
            continue
        key = (t.strftime("%Y-%m-01T00:00:00Z"), cu)
        sums[key] = [a + b for a, b in zip(sums[key], values, strict=True)]
    return sums


def test_month_buckets_follow_the_calendar_in_utc(client, pool):
    day = 86_400_000
    edges = [
        datetime(2027, 12, 31, 23, 55),  # the year's last window (ends 23:55)
        datetime(2028, 1, 1, 0, 0),  # ends at midnight: January's
        datetime(2028, 1, 31, 23, 55),
        datetime(2028, 2, 1, 0, 0),
        datetime(2028, 2, 29, 12, 0),  # a leap day
        datetime(2028, 3, 1, 0, 0),
        datetime(2028, 3, 31, 23, 55),
        datetime(2028, 4, 30, 23, 55),
    ]
    rows = [
        (t.replace(tzinfo=timezone.utc), "acme", "x", 1 + i, 0, 0, 1, 2_678_400_000 * (i + 1))
        for i, t in enumerate(edges)
    ]
    write_rows(pool, rows)
    got = get(client, bucket="1mo", group_by="customer", limit=100)["rows"]
    want = month_sums(rows)
    assert [(r["time"], r["cdn"], r["watch_ms"]) for r in got] == [
        (k[0], v[0], v[4]) for k, v in sorted(want.items())
    ]
    lengths = {"2027-12": 31, "2028-01": 31, "2028-02": 29, "2028-03": 31, "2028-04": 30}
    for r in got:
        assert r["avg_viewers"] == round(r["watch_ms"] / (lengths[r["time"][:7]] * day), 6)
    # A range that cuts months: only its rows, still stamped with the month's start.
    cut = get(
        client,
        bucket="1mo",
        **{"from": "2028-01-31T23:55:00Z", "to": "2028-02-29T12:00:00Z"},
    )["rows"]
    assert [(r["time"], r["cdn"]) for r in cut] == [
        ("2028-01-01T00:00:00Z", 3),
        ("2028-02-01T00:00:00Z", 4),
    ]
    desc = get(client, bucket="1mo", order="desc", limit=2)
    assert [r["time"] for r in desc["rows"]] == ["2028-04-01T00:00:00Z", "2028-03-01T00:00:00Z"]
    rest = get(client, bucket="1mo", order="desc", limit=100, cursor=desc["next"])["rows"]
    assert [r["time"][:7] for r in rest] == ["2028-02", "2028-01", "2027-12"]


def test_month_buckets_with_ragged_ranges_equal_the_rows(client, pool):
    rnd = random.Random(5)
    start = datetime(2026, 1, 30, 22, 0, tzinfo=timezone.utc)
    rows = [
        (start + timedelta(minutes=35 * i), f"c{i % 2}", f"x{i % 3}", rnd.randrange(10**9), 0,
         0, 1, rnd.randrange(10**6))
        for i in range(0, 2600)
    ]  # fmt: skip
    write_rows(pool, rows)
    for a, b in [
        (datetime(2026, 1, 31, 13, 17), datetime(2026, 3, 2, 0, 5)),
        (datetime(2026, 2, 1), datetime(2026, 3, 1)),
        (datetime(2026, 2, 27, 23, 59, 59), None),
        (None, datetime(2026, 2, 3, 4, 40)),
    ]:
        a = a and a.replace(tzinfo=timezone.utc)
        b = b and b.replace(tzinfo=timezone.utc)
        params = {"bucket": "1mo", "group_by": "customer", "limit": 1}
        if a:
            params["from"] = a.isoformat()
        if b:
            params["to"] = b.isoformat()
        got, _ = walk(client, **params)
        want = month_sums(rows, a, b)
        assert {(r["time"], r["customer"]): [r["cdn"], r["watch_ms"]] for r in got} == {
            k: [v[0], v[4]] for k, v in want.items()
        }, (a, b)


def test_import_as_a_terminal_shows_progress(config, pool, tmp_path):
    """With stderr a terminal, import reports its progress there."""
    pytest.importorskip("pty")
    import os
    import pty

    text, want = history_csv(3, 50, RECENT)
    path = tmp_path / "h.csv"
    path.write_text(text)
    env = cli_environment(config)
    pid, fd = pty.fork()
    if pid == 0:  # the child: stderr (and stdout) on the pseudo-terminal
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "payload_stats", "import", str(path)], env)
    output = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"written 50 of 50 rows (100%)" in output
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM stats")
        assert cur.fetchone()[0] == len(want)  # lines of one key add up
        conn.rollback()

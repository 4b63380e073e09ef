"""GET /stats/live, ``payload-stats live`` and its rich view, on real Redis.

The live counters are what Redis still holds: the open window, closed windows
not flushed yet, and snapshots a flush froze but PostgreSQL has not committed
(simulated with a failpoint raising right after the freeze). The payloads a
test sends go to the reference model (``tests/support/model.py``) too; the
endpoint's rows are compared with the model's rows of the windows not
flushed yet, exactly.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.client
from redis import Redis
from rich.console import Console

from payload_stats.buffer import ingest, keys, snapshots
from payload_stats.buffer.live import LiveRow
from payload_stats.buffer.scripts import Scripts
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.ops import terminal
from payload_stats.web.app import create_app
from payload_stats.windows import window_end, window_index
from tests.conftest import START, FakeClock, payload
from tests.support.drive import Crash, crash_at
from tests.support.model import Model
from tests.support.servers import UNREACHABLE_REDIS_URL, cli_environment, run_cli
from tests.support.store import stats_table

K0 = window_index(START, 300)  # the window of START: [10:00, 10:05)


def share(cdn: int, p2p: int) -> float | None:
    return round(p2p / (cdn + p2p), 6) if cdn + p2p else None


def iso(end: int) -> str:
    return datetime.fromtimestamp(end, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected(
    model: Model, customer: str | None = None, content: str | None = None, after: int = 0
) -> dict[tuple, dict[str, Any]]:
    """The live rows the model's rows make, keyed like ``live()``: windows ending after
    ``after`` (flushed up to it), of ``customer`` and ``content`` when given."""
    return {
        (iso(end), cu, co): {
            "time": iso(end),
            "customer": cu,
            "content": co,
            "cdn": row.cdn,
            "p2p": row.p2p,
            "sessions": row.sessions,
            "payloads": row.payloads,
            "watch_ms": row.watch_ms,
            "p2p_share": share(row.cdn, row.p2p),
        }
        for (end, cu, co), row in model.rows().items()
        if end > after and customer in (None, cu) and content in (None, co)
    }


class Sender:
    """POSTs payloads with unique tokens at the FakeClock's time; the answers must be
    the model's."""

    def __init__(self, client, clock: FakeClock, model: Model) -> None:
        self.client = client
        self.clock = clock
        self.model = model
        self.n = 0

    def send(self, **fields: Any) -> dict[str, Any]:
        self.n += 1
        body = payload(token=f"live-{self.n}", **fields)
        response = self.client.post("/stats", json=body)
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == self.model.receive_all(self.clock(), [body]).body()
        return body

    def burst(
        self,
        rnd: random.Random,
        count: int,
        customers=("acme", "beta", "c:d"),
        contents=("live/1", "vod 2"),
    ) -> None:
        for _ in range(count):
            self.send(
                customer=rnd.choice(customers),
                content=rnd.choice(contents),
                cdn=rnd.randrange(0, 10**7),
                p2p=rnd.randrange(0, 10**7),
                sessionDuration=rnd.choice((1200, 45_000, 600_000)),
            )


def live(client, **params: Any) -> dict[tuple, dict[str, Any]]:
    """The rows of GET /stats/live, keyed by (time, customer, content)."""
    response = client.get("/stats/live", query_string=params)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"rows", "truncated", "matched", "counters", "counters_read", "windows"}
    assert body["truncated"] is False  # these tests stay far below every bound
    rows = {(r["time"], r["customer"], r["content"]): r for r in body["rows"]}
    assert len(rows) == len(body["rows"]), "a (window, customer, content) row was repeated"
    # Nothing left out: the sums per window are the rows' sums.
    sums: dict[str, dict[str, int]] = {}
    for r in body["rows"]:
        total = sums.setdefault(r["time"], dict.fromkeys(SUMMED, 0))
        for name in SUMMED:
            total[name] += r[name]
    assert body["windows"] == [
        {"time": t, **total, "p2p_share": share(total["cdn"], total["p2p"])}
        for t, total in sorted(sums.items())
    ]
    return rows


SUMMED = ("cdn", "p2p", "sessions", "payloads", "watch_ms")


@pytest.fixture
def model(config) -> Model:
    return Model.of(config)


@pytest.fixture
def sender(client, clock, model) -> Sender:
    return Sender(client, clock, model)


# --- GET /stats/live -----------------------------------------------------------


def test_open_window_sums_exactly_across_shards(client, config, clock, sender, model):
    rnd = random.Random(1)
    sender.burst(rnd, 60)
    # The same customer/content is counted in several shards: a row is their sum.
    tokens = {f"live-{i}" for i in range(1, 61)}
    assert len({keys.shard_of(t, config.shards) for t in tokens}) == config.shards
    # Unusual names stay apart (docs/stats-table.md): "a:b"/"c" and "a"/"b:c" are two rows.
    sender.send(customer="a:b", content="c", cdn=1, p2p=2)
    sender.send(customer="a", content="b:c", cdn=4, p2p=8)
    sender.send(customer="ünï €", content="𝄞", cdn=16, p2p=32)
    rows = live(client)
    assert rows == expected(model)
    assert {r["time"] for r in rows.values()} == {"2026-11-26T10:05:00Z"}
    assert sum(r["payloads"] for r in rows.values()) == 63


def test_closed_windows_not_flushed_yet_are_shown(client, clock, sender, model):
    rnd = random.Random(2)
    for _ in range(3):
        sender.burst(rnd, 15)
        clock.advance(300)
    # Now 10:15:01: three closed windows (two past their grace), none flushed, an empty open one.
    sender.send(customer="now", content="open", cdn=7, p2p=0)
    rows = live(client)
    assert rows == expected(model)
    assert sorted({r["time"] for r in rows.values()}) == [
        "2026-11-26T10:05:00Z",
        "2026-11-26T10:10:00Z",
        "2026-11-26T10:15:00Z",
        "2026-11-26T10:20:00Z",
    ]


def test_frozen_snapshots_not_committed_are_shown(
    client, redis, pool, config, clock, sender, model
):
    rnd = random.Random(3)
    sender.burst(rnd, 20)
    clock.advance(300)
    sender.burst(rnd, 20)
    clock.advance(300 + 10)  # 10:10:11: both windows closed and past grace
    before = live(client)
    with pytest.raises(Crash):
        flush_once(redis, pool, config, clock, failpoint=crash_at("after_freeze"))
    assert {s.k for s in snapshots.pending_snapshots(redis, config)} == {K0, K0 + 1}
    assert stats_table(pool) == {}
    assert live(client) == before == expected(model)

    # A late payload for the frozen window lands in fresh live keys: the row is
    # the sum of the snapshot and the live counters.
    open_now = clock.now
    clock.now = START + 100
    late = sender.send(customer="acme", content="live/1", cdn=1000, p2p=3000)
    clock.now = open_now
    sender.send(customer="acme", content="live/1", cdn=5, p2p=5)  # the open window
    rows = live(client)
    assert rows == expected(model)
    frozen = before[("2026-11-26T10:05:00Z", "acme", "live/1")]
    assert rows[("2026-11-26T10:05:00Z", "acme", "live/1")]["cdn"] == frozen["cdn"] + late["cdn"]

    # A flush that succeeds moves every closed window, frozen or live, out of Redis.
    clock.advance(300)
    flush_once(redis, pool, config, clock)
    assert live(client) == {}
    assert stats_table(pool) == model.rows()


def test_nothing_is_shown_after_a_successful_flush(
    client, redis, pool, config, clock, sender, model
):
    rnd = random.Random(4)
    sender.burst(rnd, 25)
    clock.advance(300)
    sender.burst(rnd, 5)
    clock.advance(300 + 5)  # 10:10:06: both windows flushable
    assert len({r["time"] for r in live(client).values()}) == 2
    report = flush_once(redis, pool, config, clock)
    assert report.rows == len(model.rows())
    assert live(client) == {}
    # New traffic in the open window is all there is.
    flushed = max(model.ends())
    sender.send(customer="after", content="flush", cdn=3, p2p=9)
    assert live(client) == expected(model, after=flushed)
    assert [r["time"] for r in expected(model, after=flushed).values()] == ["2026-11-26T10:15:00Z"]


@pytest.mark.parametrize(
    "params",
    [
        {"customer": "acme"},
        {"content": "vod 2"},
        {"customer": "c:d", "content": "live/1"},
        {"customer": "nobody"},
        {"customer": "acm"},
        {"customer": "ACME"},
        {"customer": ""},
    ],
    ids=["customer", "content", "both", "unknown", "prefix", "case", "empty-is-none"],
)
def test_filters(client, clock, sender, model, params):
    rnd = random.Random(5)
    sender.burst(rnd, 30)
    clock.advance(300)
    sender.burst(rnd, 30)
    want = expected(model, params.get("customer") or None, params.get("content"))
    if params.get("customer") in ("acme", "c:d") or params.get("content"):
        assert want
    assert live(client, **params) == want


def test_p2p_share(client, sender, model):
    sender.send(customer="zero", content="x", cdn=0, p2p=0)  # no bytes: share is null
    sender.send(customer="third", content="x", cdn=2, p2p=1)
    sender.send(customer="third", content="x", cdn=0, p2p=0)
    sender.send(customer="all-p2p", content="x", cdn=0, p2p=10**12)
    sender.send(customer="all-cdn", content="x", cdn=10**12, p2p=0)
    rows = live(client)
    shares = {cu: r["p2p_share"] for (_, cu, _), r in rows.items()}
    assert shares == {"zero": None, "third": 0.333333, "all-p2p": 1.0, "all-cdn": 0.0}
    assert rows == expected(model)
    assert rows[("2026-11-26T10:05:00Z", "zero", "x")]["payloads"] == 1
    assert rows[("2026-11-26T10:05:00Z", "third", "x")]["sessions"] == 2


def test_empty(client):
    assert client.get("/stats/live").get_json() == {
        "rows": [],
        "truncated": False,
        "matched": 0,
        "counters": 0,
        "counters_read": 0,
        "windows": [],
    }


def test_reads_through_the_window_index_in_a_few_pipelined_round_trips(
    client, clock, sender, monkeypatch
):
    """Never KEYS or SCAN; the number of round trips does not grow with the data."""
    commands: list[str] = []
    round_trips = []
    real_execute = redis.client.Pipeline.execute
    real_stack = redis.client.Pipeline.pipeline_execute_command
    real_direct = Redis.execute_command

    def execute(self, *args, **kwargs):
        round_trips.append(len(self.command_stack))
        return real_execute(self, *args, **kwargs)

    def stack(self, *args, **options):
        commands.append(str(args[0]).upper())
        return real_stack(self, *args, **options)

    def direct(self, *args, **options):
        commands.append(str(args[0]).upper())
        round_trips.append(1)
        return real_direct(self, *args, **options)

    def measure() -> tuple[int, list[str]]:
        commands.clear()
        round_trips.clear()
        with monkeypatch.context() as m:
            m.setattr(redis.client.Pipeline, "execute", execute)
            m.setattr(redis.client.Pipeline, "pipeline_execute_command", stack)
            m.setattr(Redis, "execute_command", direct)
            live(client)
        return len(round_trips), list(commands)

    sender.send()
    small, small_commands = measure()
    rnd = random.Random(6)
    for _ in range(3):
        sender.burst(rnd, 40, customers=[f"c{i}" for i in range(9)])
        clock.advance(300)
    large, large_commands = measure()
    assert 1 <= small == large <= 3
    assert "ZRANGE" in small_commands and "HGETALL" in large_commands
    scans = {"KEYS", "SCAN", "SSCAN", "HSCAN", "ZSCAN"}
    assert not scans & set(small_commands + large_commands)
    assert len(large_commands) > len(small_commands)  # the work went into the pipelines


def test_redis_down_answers_503_json(config, clock):
    client = create_app(replace(config, redis_url=UNREACHABLE_REDIS_URL), clock=clock).test_client()
    response = client.get("/stats/live")
    assert response.status_code == 503
    assert response.is_json
    assert response.get_json()["error"] == "unavailable"
    assert response.headers.get("Retry-After")


# --- payload-stats live --once -------------------------------------------------


def _env(config: Config, tmp_path: Path) -> dict[str, str]:
    return cli_environment(
        config, STATS_DATA_DIR=str(tmp_path), COLUMNS="160", NO_COLOR="1", TERM="dumb"
    )


@pytest.fixture
def real_time_traffic(redis: Redis, config: Config) -> list[int]:
    """The same payloads in the window open now and in the next one (so the
    subprocess finds them even if a window closes while it starts), and other
    customers in the window before. Returns the two window ends."""
    scripts = Scripts(redis)
    length = config.window_seconds
    now = time.time()
    k = window_index(now, length)
    ends = []
    for i, at in enumerate((now, (k + 1) * length + 0.5)):
        ingest.record(
            redis,
            scripts,
            config,
            [
                payload(token=f"cli-{i}-{j}", customer=cu, content=co, cdn=cdn, p2p=p2p)
                for j, (cu, co, cdn, p2p) in enumerate(
                    [
                        ("acme-live", "channel-1", 9_000_000, 1_000_000),
                        ("beta-vod", "film 7", 2_000, 6_000),
                        ("beta-vod", "film 7", 1_000, 1_000),
                        ("gamma", "news", 500, 0),
                    ]
                )
            ],
            at,
        )
        ends.append(window_end(window_index(at, length), length))
    ingest.record(
        redis,
        scripts,
        config,
        [payload(token="cli-old", customer="closed-window-only")],
        now - length,
    )
    return ends


def _title_end(out: str) -> int:
    match = re.search(r"window ending (\d\d):(\d\d):(\d\d) UTC", out)
    assert match, out
    h, m, s = map(int, match.groups())
    return h * 3600 + m * 60 + s


def test_live_once_prints_the_open_window(config, tmp_path, real_time_traffic):
    done = run_cli(_env(config, tmp_path), "live", "--once")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert _title_end(out) in {end % 86400 for end in real_time_traffic}
    for name in ("acme-live", "channel-1", "beta-vod", "film 7", "gamma", "news"):
        assert name in out
    assert "closed-window-only" not in out
    assert "3 of 3 customer/content pairs" in out
    # Ordered by traffic: acme-live (10 MB), beta-vod (10 KB), gamma (500 B).
    assert out.index("acme-live") < out.index("beta-vod") < out.index("gamma")
    assert "10.0 MB" not in out  # cdn and p2p are shown apart
    assert "9.0 MB" in out and "1.0 MB" in out and "10.0%" in out


def test_live_once_limit_and_customer(config, tmp_path, real_time_traffic):
    env = _env(config, tmp_path)
    done = run_cli(env, "live", "--once", "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert "acme-live" in done.stdout and "beta-vod" not in done.stdout
    assert "1 of 3 customer/content pairs" in done.stdout
    done = run_cli(env, "live", "--once", "--customer", "beta-vod")
    assert done.returncode == 0, done.stderr
    assert "beta-vod" in done.stdout and "acme-live" not in done.stdout
    assert "1 of 1 customer/content pairs" in done.stdout
    assert "3.0 KB" in done.stdout and "7.0 KB" in done.stdout and "70.0%" in done.stdout


def test_live_once_with_redis_down_exits_1(config, tmp_path):
    env = _env(replace(config, redis_url=UNREACHABLE_REDIS_URL), tmp_path)
    done = run_cli(env, "live", "--once")
    assert done.returncode == 1
    assert "Redis" in done.stderr
    assert "Traceback" not in done.stderr


# --- payload_stats.ops.terminal.render ------------------------------------------------------


def _render(rows: list[LiveRow], now: float, limit: int, config: Config) -> str:
    console = Console(record=True, width=120)
    console.print(terminal.render(rows, config, now, limit))
    return console.export_text()


def _row(customer: str, cdn: int, p2p: int, sessions: int = 0, payloads: int = 0) -> LiveRow:
    return LiveRow(
        window_end(K0, 300), customer, f"{customer}-content", cdn, p2p, sessions, payloads
    )


ROWS = [
    _row("mid", 1_500, 500, sessions=2, payloads=30),
    _row("nothing", 0, 0, sessions=1, payloads=6),
    _row("p2p-only", 0, 2_500_000_000, sessions=40, payloads=600),
    _row("big", 5_000_000, 3_000_000, sessions=9, payloads=120),
    _row("tiny", 999, 0, sessions=0, payloads=12),
]


def _line(text: str, customer: str) -> str:
    lines = [line for line in text.splitlines() if f" {customer} " in line]
    assert len(lines) == 1, text
    return lines[0]


def test_render_sorts_by_traffic_and_formats(config):
    now = K0 * 300 + 60  # one minute into the window
    text = _render(ROWS, now, 20, config)
    assert "window ending 10:05:00 UTC (60s of 300s)" in text
    order = [text.index(f" {c} ") for c in ("p2p-only", "big", "mid", "tiny", "nothing")]
    assert order == sorted(order)
    cells = {
        c: _line(text, c).replace("│", "|").split("|")
        for c in ("p2p-only", "big", "mid", "tiny", "nothing")
    }
    values = {c: [cell.strip() for cell in cells[c] if cell.strip()] for c in cells}
    assert values["p2p-only"] == [
        "p2p-only",
        "p2p-only-content",
        "0 B",
        "2.5 GB",
        "100.0%",
        "40",
        "10.0",
        "0.0",  # viewers: no watch time in these rows
    ]
    assert values["big"] == ["big", "big-content", "5.0 MB", "3.0 MB", "37.5%", "9", "2.0", "0.0"]
    assert values["mid"] == ["mid", "mid-content", "1.5 KB", "500 B", "25.0%", "2", "0.5", "0.0"]
    assert values["tiny"] == ["tiny", "tiny-content", "999 B", "0 B", "0.0%", "0", "0.2", "0.0"]
    assert values["nothing"] == ["nothing", "nothing-content", "0 B", "0 B", "-", "1", "0.1", "0.0"]
    assert "5 of 5 customer/content pairs" in text


def test_render_shows_only_the_top_rows_up_to_the_limit(config):
    text = _render(ROWS, K0 * 300 + 150, 2, config)
    assert " p2p-only " in text and " big " in text
    for hidden in ("mid", "tiny", "nothing"):
        assert f" {hidden} " not in text
    assert "2 of 5 customer/content pairs" in text
    assert "(150s of 300s)" in text


def test_render_empty_window(config):
    text = _render([], K0 * 300, 20, config)
    assert "window ending 10:05:00 UTC" in text
    assert "0 of 0 customer/content pairs" in text

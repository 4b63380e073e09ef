"""Watch time through history, /metrics, /stats/live and the terminal view
(docs/stats-table.md, "Watch time and average viewers"), on the real servers.

10 devices play one content for a whole 300 s window, each sending a payload
every 30 s with timespan 30000: watch_ms 3,000,000 and 10 average viewers
over the window, 10 x 300/3600 over its hour, and so on for days and months.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from rich.console import Console

from payload_stats.buffer.live import top_rows
from payload_stats.flush.scheduler import FlushJob
from payload_stats.ops import terminal
from tests.conftest import START, payload, write_rows
from tests.integration.test_history_api import get
from tests.integration.test_metrics_docs import scrape, value

WINDOW_MS = 300_000


def ten_viewers(client, clock) -> None:
    """10 devices, 10 payloads each, every 30 s of the window of START."""
    for step in range(10):
        clock.now = START - 1 + 30 * step + 1
        for device in range(10):
            body = payload(
                token=f"dev-{device}",
                customer="acme",
                content="live/1",
                timespan=30_000,
                sessionDuration=30_000 * (step + 1),
            )
            assert client.post("/stats", json=body).status_code == 200


def test_watch_time_in_live_rows_terminal_history_and_metrics(client, redis, pool, config, clock):
    ten_viewers(client, clock)
    [live] = client.get("/stats/live").get_json()["rows"]
    assert live["watch_ms"] == 100 * 30_000

    # The terminal view: average viewers over the part of the window elapsed.
    rows = top_rows(redis, config, limit=20)
    console = Console(record=True, width=140)
    console.print(terminal.render(rows, config, START - 1 + 300, 20))
    text = console.export_text()
    assert "viewers" in text
    assert text.count("10.0") >= 1

    clock.now = START + 300 + 10
    FlushJob(redis, pool, config, clock)()
    [row] = get(client)["rows"]
    assert (row["watch_ms"], row["avg_viewers"]) == (3_000_000, 10.0)
    for bucket, length_ms in (("5m", WINDOW_MS), ("1h", 3_600_000), ("1d", 86_400_000),
                              ("1mo", 30 * 86_400_000)):  # fmt: skip
        [rolled] = get(client, bucket=bucket, group_by="customer")["rows"]
        assert rolled["watch_ms"] == 3_000_000
        assert rolled["avg_viewers"] == round(3_000_000 / length_ms, 6), bucket
    assert value(scrape(client), "payload_stats_flush_watch_ms_total") == 3_000_000


def test_avg_viewers_exact_to_six_places(client, pool):
    end = datetime(2026, 11, 26, 10, 5, tzinfo=timezone.utc)
    huge = 2**62 + 150
    write_rows(pool, [(end, "a", "x", 0, 0, 0, 1, 1), (end, "b", "x", 0, 0, 0, 1, huge)])
    rows = {r["customer"]: r for r in get(client)["rows"]}
    exact = (Decimal(huge) / Decimal(WINDOW_MS)).quantize(Decimal("0.000001"))
    assert rows["a"]["avg_viewers"] == 0.000003  # 1/300000, rounded to 6 places
    assert rows["b"]["watch_ms"] == huge
    assert rows["b"]["avg_viewers"] == float(exact)
    lines = client.get("/stats?format=csv").get_data(as_text=True).splitlines()
    assert lines[1].endswith(",0,0,0,1,1,0.000003,")
    assert lines[2].endswith(f",{huge},{exact},")  # every digit, in the CSV

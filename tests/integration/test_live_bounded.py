"""GET /stats/live and ``payload-stats live`` are bounded: top-N by traffic, filters
applied in the read, and at most STATS_LIVE_MAX_KEYS counters read per call."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from rich.console import Console

from payload_stats.buffer import ingest
from payload_stats.buffer.live import top_rows
from payload_stats.buffer.scripts import Scripts
from payload_stats.ops import terminal
from payload_stats.web.app import create_app
from payload_stats.windows import window_index
from tests.conftest import START, payload

K0 = window_index(START, 300)


def fill(redis, config, pairs: int, at: float = START, seed: int = 0) -> dict[tuple, int]:
    """One payload per (customer, content) pair; returns the traffic of each pair."""
    rnd = random.Random(seed)
    traffic = {}
    scripts = Scripts(redis)
    for start in range(0, pairs, 500):
        batch = []
        for i in range(start, min(pairs, start + 500)):
            cdn, p2p = rnd.randrange(10**9), rnd.randrange(10**9)
            batch.append(
                payload(
                    token=f"t{seed}-{i}", customer=f"cu{i % 13}", content=f"co{i}", cdn=cdn, p2p=p2p
                )
            )
            traffic[(f"cu{i % 13}", f"co{i}")] = cdn + p2p
        ingest.record(redis, scripts, config, batch, at)
    return traffic


def test_top_rows_by_traffic_when_everything_is_read(redis, config):
    traffic = fill(redis, config, 300)
    found = top_rows(redis, config, limit=10)
    assert found.complete and found.truncated  # 300 rows matched, 10 returned
    assert (found.matched, found.counters, found.counters_read) == (300, 300, 300)
    want = sorted(traffic.items(), key=lambda kv: -kv[1])[:10]
    assert [((r.customer, r.content), r.cdn + r.p2p) for r in found.rows] == want
    everything = top_rows(redis, config, limit=None)
    assert not everything.truncated and len(everything.rows) == 300


def test_filters_are_applied_before_the_counters_are_read(redis, config, monkeypatch):
    traffic = fill(redis, config, 260)
    hmgets = []  # the counter hashes read
    pipeline_class = type(redis.pipeline())
    original = pipeline_class.pipeline_execute_command

    def counting(self, *args, **options):
        if str(args[0]).upper() == "HGETALL":
            hmgets.append(args[1])
        return original(self, *args, **options)

    monkeypatch.setattr(pipeline_class, "pipeline_execute_command", counting)
    found = top_rows(redis, config, customer="cu3", limit=None)
    assert {(r.customer, r.content) for r in found.rows} == {p for p in traffic if p[0] == "cu3"}
    assert len(hmgets) == len(found.rows) == 20
    hmgets.clear()
    found = top_rows(redis, config, customer="cu3", content="co16", limit=None)
    assert [(r.customer, r.content) for r in found.rows] == [("cu3", "co16")]
    assert len(hmgets) == 1


def test_the_budget_bounds_what_is_read(redis, config, monkeypatch):
    fill(redis, config, 1500)
    fill(redis, config, 400, at=START + 300, seed=1)  # the next window too
    commands: list[str] = []
    pipeline_class = type(redis.pipeline())
    original = pipeline_class.pipeline_execute_command

    def stack(self, *args, **options):
        commands.append(str(args[0]).upper())
        return original(self, *args, **options)

    monkeypatch.setattr(pipeline_class, "pipeline_execute_command", stack)
    found = top_rows(redis, config, limit=50, max_keys=400)
    assert found.counters == 1900
    assert 390 <= found.counters_read <= 400 + 2 * config.shards
    assert not found.complete and found.truncated
    assert len(found.rows) == 50 and found.matched <= found.counters_read
    assert commands.count("HGETALL") == found.counters_read
    assert not {"KEYS", "SCAN"} & set(commands)
    # Both windows got a share of the budget.
    assert {r.time for r in top_rows(redis, config, limit=None, max_keys=400).rows} == {
        (K0 + 1) * 300,
        (K0 + 2) * 300,
    }


def test_the_endpoint_reports_truncation(redis, config, clock):
    fill(redis, config, 250)
    client = create_app(replace(config, live_max_keys=100), clock=clock).test_client()
    body = client.get("/stats/live?limit=5").get_json()
    assert len(body["rows"]) == 5
    assert body["truncated"] is True
    assert body["counters"] == 250 and body["counters_read"] <= 100 + 2 * config.shards
    totals = [r["cdn"] + r["p2p"] for r in body["rows"]]
    assert totals == sorted(totals, reverse=True)
    client = create_app(config, clock=clock).test_client()
    body = client.get("/stats/live?limit=1000").get_json()
    assert (len(body["rows"]), body["matched"], body["truncated"]) == (250, 250, False)


@pytest.mark.parametrize("shards", [4], ids=["4shards"])
def test_the_terminal_says_when_it_read_part_of_the_window(redis, config):
    fill(redis, config, 300)
    found = top_rows(redis, config, only_window=K0, limit=5, max_keys=100)
    console = Console(record=True, width=140)
    console.print(terminal.render(found, config, START + 10, 5))
    text = console.export_text()
    assert f"5 of {found.matched} customer/content pairs" in text
    assert f"(partial: read {found.counters_read:,} of 300 counters" in text


def test_no_batch_of_counters_is_started_past_the_time_budget(redis, config):
    fill(redis, config, 120)
    found = top_rows(redis, config, time_budget=-1.0)
    assert (found.rows, found.counters, found.counters_read) == ([], 120, 0)
    assert found.truncated and not found.complete
    # With a filter, the idents it rules out were examined all the same.
    found = top_rows(redis, config, customer="cu1", time_budget=-1.0)
    assert found.rows == [] and found.counters_read == 120 - 10
    assert top_rows(redis, config, time_budget=None).complete

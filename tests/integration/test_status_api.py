"""GET /stats/status (the open window, pending windows and the flush lag) and the
``search`` of GET /stats/live, the two reads the dashboard adds."""

from __future__ import annotations

from dataclasses import replace

from payload_stats.config import Config
from payload_stats.flush.figures import record_flush
from payload_stats.flush.flusher import flush_once
from payload_stats.web.app import create_app
from tests.conftest import START, payload
from tests.support.servers import UNREACHABLE_REDIS_URL

L = 300
K = int(START) // L


def test_status_names_the_open_window_and_what_waits_for_the_flush(client, clock, redis, pool,
                                                                    config):  # fmt: skip
    empty = client.get("/stats/status")
    assert empty.status_code == 200
    assert empty.get_json() == {
        "now": "2026-11-26T10:00:01.000Z",
        "window_seconds": 300,
        "flush_grace_seconds": 5.0,
        "flush_interval_seconds": 10.0,
        "open_window": {
            "start": "2026-11-26T10:00:00.000Z",
            "end": "2026-11-26T10:05:00.000Z",
            "elapsed_seconds": 1.0,
        },
        "flush": {
            "pending_windows": 0,
            "oldest_pending": None,
            "lag_seconds": 0.0,
            "last_success": None,
            "seconds_since_last_success": None,
            "last_duration_seconds": None,
            "runs": 0,
            "failures": 0,
            "rows": 0,
        },
    }
    for t in (START - 2 * L, START - L, START):  # two closed windows, the open one
        clock.now = t
        assert client.post("/stats", json=payload(token=f"t{t}")).status_code == 200
    clock.now = START + 60
    flush = client.get("/stats/status").get_json()["flush"]
    assert flush["pending_windows"] == 2
    assert flush["oldest_pending"] == "2026-11-26T09:55:00.000Z"
    assert flush["lag_seconds"] == 5 * 60 + 61

    flush_once(redis, pool, config, clock)
    record_flush(redis, config, ok=True, rows=2, duration=0.25)
    flush = client.get("/stats/status").get_json()["flush"]
    assert (flush["pending_windows"], flush["oldest_pending"], flush["lag_seconds"]) == (0, None, 0)
    assert (flush["runs"], flush["failures"], flush["rows"]) == (1, 0, 2)
    assert flush["last_duration_seconds"] == 0.25
    assert flush["last_success"].endswith("Z")


def test_status_needs_the_api_token_and_answers_503_without_redis(config: Config, clock):
    guarded = create_app(replace(config, api_token="tok"), clock=clock).test_client()
    assert guarded.get("/stats/status").status_code == 401
    ok = guarded.get("/stats/status", headers={"Authorization": "Bearer tok"})
    assert ok.status_code == 200
    down = create_app(replace(config, redis_url=UNREACHABLE_REDIS_URL), clock=clock).test_client()
    answer = down.get("/stats/status")
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "unavailable"


def test_live_search_keeps_rows_whose_customer_or_content_contains_it(client, clock):
    names = [("Acme-TV", "live/News"), ("acme-tv", "vod/film"), ("beta", "news/acme"),
             ("beta", "vod/other")]  # fmt: skip
    for n, (customer, content) in enumerate(names):
        body = payload(token=f"s{n}", customer=customer, content=content, cdn=100 + n)
        assert client.post("/stats", json=body).status_code == 200

    def found(**params) -> list[tuple[str, str]]:
        answer = client.get("/stats/live", query_string=params)
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        assert body["matched"] == len(body["rows"])
        assert sum(w["cdn"] for w in body["windows"]) == sum(r["cdn"] for r in body["rows"])
        return sorted((r["customer"], r["content"]) for r in body["rows"])

    assert found(search="ACME") == sorted(names[:3])  # any case, customer or content
    assert found(search="news") == [("Acme-TV", "live/News"), ("beta", "news/acme")]
    assert found(search="news", customer="beta") == [("beta", "news/acme")]
    assert found(search="") == sorted(names)  # empty: no filter
    assert found(search="nothing") == []
    bad = client.get("/stats/live", query_string={"search": "a\x00b"})
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_parameter"
    assert client.get("/stats/live", query_string={"search": "x" * 257}).status_code == 400

"""Retry identity and its bound (docs/retries.md).

A retry is (customer, content, token, sessionDuration): the same token and
duration under another customer or content is another payload, and cannot make
a device's real payload a duplicate nor take its session. A session remembers at
most ``Config.retry_memory_bytes`` bytes of durations per window: a flood cannot
push its earlier durations out; payloads past the bound are counted, not
remembered, and counted on /metrics. In process, with the FakeClock.
"""

from __future__ import annotations

import pytest

from payload_stats.flush.flusher import flush_once
from payload_stats.windows import window_end, window_index
from tests.conftest import START, payload
from tests.integration.test_exactness_support import metric, stats_table

END = window_end(window_index(START, 300), 300)
COUNTED = {"accepted": 1, "duplicates": 0}
RETRY = {"accepted": 0, "duplicates": 1}

pytestmark = pytest.mark.parametrize("shards", [4], ids=["4shards"])


def post(client, body) -> tuple[int, object]:
    path = "/stats/batch" if isinstance(body, list) else "/stats"
    response = client.post(path, json=body)
    return response.status_code, response.get_json()


def metrics(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_another_customer_or_content_cannot_touch_a_devices_retries_or_session(
    config, redis, pool, client, clock
):
    victim = payload(token="T", customer="victim", content="vod/1", cdn=700, p2p=10,
                     timespan=30000, sessionDuration=1200)  # fmt: skip
    as_other_customer = {**victim, "customer": "attacker", "cdn": 5, "p2p": 0}
    as_other_content = {**victim, "content": "vod/2", "cdn": 6, "p2p": 0}

    # Sent first, with the victim's token and sessionDuration: their own payloads.
    assert post(client, as_other_customer) == (200, COUNTED)
    assert post(client, as_other_content) == (200, COUNTED)
    # The victim's real payload is not a duplicate of them.
    assert post(client, victim) == (200, COUNTED)
    # Its genuine retry is one (only the four fields count, not the bytes).
    assert post(client, {**victim, "cdn": 999}) == (200, RETRY)
    assert post(client, as_other_customer) == (200, RETRY)
    # In one batch, in either order, each is its own payload.
    clock.advance(1)
    later = {**victim, "sessionDuration": 31200, "cdn": 70}
    assert post(client, [{**later, "customer": "attacker", "cdn": 1}, later]) == (
        200,
        {"accepted": 2, "duplicates": 0},
    )
    assert post(client, [later, {**later, "content": "vod/2", "cdn": 2}, later]) == (
        200,
        {"accepted": 1, "duplicates": 2},
    )

    clock.now = END + 5
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == {
        # Each pair started its own session; the victim's was not taken.
        (END, "victim", "vod/1"): (770, 20, 1, 2, 60000),
        (END, "attacker", "vod/1"): (6, 10, 1, 2, 60000),
        (END, "victim", "vod/2"): (8, 10, 1, 2, 60000),
    }


def test_a_flooding_session_cannot_push_its_first_payload_out_of_retry_memory(
    config, redis, pool, client, clock
):
    room = config.retry_memory_bytes
    assert room == 600  # the default for 300 s windows
    first = payload(token="F", customer="flood", content="x", cdn=1000, p2p=0, timespan=10,
                    sessionDuration=100_000)  # fmt: skip
    assert post(client, first) == (200, COUNTED)
    flood = [{**first, "cdn": 1, "sessionDuration": 100_000 + i} for i in range(1, 301)]
    for start in range(0, 300, 100):
        assert post(client, flood[start : start + 100]) == (200, {"accepted": 100, "duplicates": 0})

    # Durations are kept as ",d1,d2,...,": six digits and a comma each, after the
    # leading comma, so 600 bytes keep the first 85 durations of the window.
    kept = (room - 1) // 7
    assert kept == 85
    unprotected = 301 - kept
    scraped = metrics(client)
    assert metric(scraped, "payload_stats_payloads_unprotected_total") == unprotected
    assert metric(scraped, "payload_stats_payloads_accepted_total") == 301

    # The first payload's genuine retry, after the flood, is still a retry.
    assert post(client, {**first, "cdn": 5000}) == (200, RETRY)
    # So is the last one remembered; the first one past the bound was never remembered.
    assert post(client, flood[kept - 2]) == (200, RETRY)
    assert post(client, flood[kept - 1]) == (200, COUNTED)
    scraped = metrics(client)
    assert metric(scraped, "payload_stats_payloads_unprotected_total") == unprotected + 1
    assert metric(scraped, "payload_stats_payloads_duplicate_total") == 2

    # The bound is per window: the next window remembers again, and the first
    # payload is still a retry there (within the horizon).
    clock.now = END + 1
    assert post(client, {**first, "cdn": 7}) == (200, RETRY)
    fresh = {**first, "cdn": 3, "sessionDuration": 400_000}
    assert post(client, fresh) == (200, COUNTED)
    assert post(client, fresh) == (200, RETRY)
    scraped = metrics(client)
    assert metric(scraped, "payload_stats_payloads_unprotected_total") == unprotected + 1
    assert metric(scraped, "payload_stats_payloads_duplicate_total") == 4

    clock.now = END + 300 + 5
    flush_once(redis, pool, config, clock)
    assert stats_table(pool) == {
        (END, "flood", "x"): (1000 + 300 + 1, 0, 1, 302, 10 * 302),
        (END + 300, "flood", "x"): (3, 0, 0, 1, 10),
    }

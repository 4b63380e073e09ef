"""The dashboard in a real browser (headless Chromium through selenium).

The app under test is the test's own (real Redis and PostgreSQL, a fake clock),
served over HTTP from a thread. Each test posts known payloads, loads
/dashboard, and reads what the page shows: card and table text, the exact
values behind them (``data-value``), the chart's points
(``window.psDashboard.charts``), the requests it made, and the browser's
console, which must hold no error. Expected numbers come from the reference
model (tests/support/model.py). Screenshots go to the test's tmp_path.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest

from payload_stats.flush.flusher import flush_once
from payload_stats.web.app import create_app
from tests.conftest import START, payload
from tests.support import browser
from tests.support.model import Model, Row
from tests.support.web import ServedApp

pytestmark = pytest.mark.skipif(bool(browser.missing()), reason=browser.missing() or "")

L = 300
K = int(START) // L  # the open window: 10:00:00 to 10:05:00
OPEN_END, CLOSED_END, FLUSHED_END = (K + 1) * L, K * L, (K - 1) * L


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    chrome = browser.chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.quit()


def _post(client, clock, t: float, body: dict, model: Model) -> None:
    clock.now = t
    response = client.post("/stats", json=body)
    assert response.status_code == 200, response.get_json()
    model.receive(t, body, counted=response.get_json()["accepted"] == 1)


def _traffic(app, clock, model: Model) -> None:
    """Three windows: one flushed into PostgreSQL, one closed but still in Redis
    (pending), and the open one."""
    client = app.test_client()
    sent = [
        (START - 2 * L, payload(token="a", content="movie-1", cdn=4_000_000, p2p=1_000_000)),
        (START - 2 * L + 30, payload(token="a", content="movie-1", cdn=2_000_000, p2p=2_000_000,
                                     sessionDuration=31_200)),
        (START - L, payload(token="b", content="movie-1", cdn=3_000_000, p2p=0)),
        (START - L + 1, payload(token="c", customer="zeta", content="live/ch-2", cdn=500,
                                p2p=1500, timespan=10_000)),
        (START, payload(token="d", content="movie-1", cdn=1_500_000, p2p=500_000)),
        (START, payload(token="e", content="live/ch-2", cdn=250_000, p2p=750_000)),
        (START, payload(token="e", content="live/ch-2", cdn=250_000, p2p=750_000)),  # a retry
    ]  # fmt: skip
    for t, body in sent:
        _post(client, clock, t, body, model)
    clock.now = START


def _flush_first_window(redis, pool, config) -> None:
    report = flush_once(redis, pool, config, lambda: FLUSHED_END + config.flush_grace_seconds)
    assert [w.end.timestamp() for w in report.windows] == [FLUSHED_END]


def _per_window(model: Model) -> dict[int, Row]:
    out: dict[int, Row] = defaultdict(Row)
    for (end, _, _), row in model.rows().items():
        out[end] += row
    return out


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _value(driver, element_id: str) -> str | None:
    return driver.execute_script(
        f"return document.getElementById('{element_id}').getAttribute('data-value')"
    )


def _table(driver) -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#live-table tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )


def _load(driver, url: str) -> None:
    driver.get(url)
    browser.wait_until(driver, "return window.psDashboard && window.psDashboard.ready")


def test_the_page_shows_the_numbers_posted(driver, app, clock, redis, pool, config, tmp_path):
    model = Model.of(config)
    _traffic(app, clock, model)
    _flush_first_window(redis, pool, config)
    windows = _per_window(model)
    open_row = windows[OPEN_END]
    assert open_row == Row(cdn=1_750_000, p2p=1_250_000, sessions=2, payloads=2, watch_ms=60_000)

    with ServedApp(app) as served:
        driver.get(served.url + "/")  # redirects to /dashboard
        assert driver.current_url == served.url + "/dashboard"
        browser.wait_until(driver, "return window.psDashboard.ready")
        browser.wait_until(driver, "return window.psDashboard.charts.range")
        driver.save_screenshot(str(tmp_path / "dashboard.png"))

        # The open window's cards: text as shown, exact values behind it.
        assert _text(driver, "total-cdn") == "1.75 MB"
        assert _value(driver, "total-cdn") == "1750000"
        assert _text(driver, "total-p2p") == "1.25 MB"
        assert _value(driver, "total-p2p") == "1250000"
        assert _text(driver, "total-share") == "41.7 %"
        assert _text(driver, "total-sessions") == "2"
        assert _text(driver, "total-payloads") == "2"
        assert _text(driver, "total-watch") == "1 min 00 s"
        assert _text(driver, "total-viewers") == "–"  # 1 s into the window: too early to say

        # The status line: the closed window still in Redis, 1 s after its end.
        assert "5 min windows" not in _text(driver, "status-window")
        assert _text(driver, "status-window") == (
            "300 s windows · open window ends 10:05:00 UTC (1 s of 300 s)"
        )
        assert _text(driver, "status-flush") == (
            "flush lag 1.0 s · 1 window pending · no flush yet"
        )

        # The table: every row still in Redis, most traffic first.
        assert _table(driver) == [
            ["10:00:00 (closed)", "acme", "movie-1", "3.00 MB", "0 B", "0.0 %", "1", "1",
             "30 s", "0.1"],
            ["10:05:00", "acme", "movie-1", "1.50 MB", "500 kB", "25.0 %", "1", "1",
             "30 s", "–"],
            ["10:05:00", "acme", "live/ch-2", "250 kB", "750 kB", "75.0 %", "1", "1",
             "30 s", "–"],
            ["10:00:00 (closed)", "zeta", "live/ch-2", "500 B", "1.50 kB", "75.0 %", "1", "1",
             "10 s", "0.0"],
        ]  # fmt: skip
        assert _text(driver, "live-note") == "4 of 4 customer/content pairs"

        # The last windows: flushed (GET /stats), pending and open (GET /stats/live).
        chart = driver.execute_script("return window.psDashboard.charts.windows")
        assert len(chart["x"]) == 30 and chart["x"][-1] == OPEN_END
        points = {
            x: (cdn, p2p, pending)
            for x, cdn, p2p, pending in zip(
                chart["x"], chart["cdn"], chart["p2p"], chart["pending"], strict=True
            )
            if cdn or p2p
        }
        assert points == {
            FLUSHED_END: (windows[FLUSHED_END].cdn, windows[FLUSHED_END].p2p, False),
            CLOSED_END: (windows[CLOSED_END].cdn, windows[CLOSED_END].p2p, True),
            OPEN_END: (open_row.cdn, open_row.p2p, True),
        }
        assert points[FLUSHED_END][:2] == (6_000_000, 3_000_000)
        share = dict(zip(chart["x"], chart["share"], strict=True))
        assert share[FLUSHED_END] == pytest.approx(100 * 3 / 9, abs=0.001)
        # The same points on the chart element, for any reader of the page.
        drawn = driver.execute_script(
            "return JSON.parse(document.getElementById('chart-windows').dataset.points)"
        )
        assert drawn["x"] == chart["x"] and drawn["cdn"] == chart["cdn"]

        # The range (GET /stats per 5 minutes): the flushed window only.
        rng = driver.execute_script("return window.psDashboard.charts.range")
        assert rng["bucket"] == "5m"
        assert {x: (c, p) for x, c, p in zip(rng["x"], rng["cdn"], rng["p2p"], strict=True)
                if c or p} == {FLUSHED_END: (6_000_000, 3_000_000)}  # fmt: skip
        assert (
            "per 5 minutes: CDN 6.00 MB · P2P 3.00 MB (33.3 %) · 1 session started · 2 payloads"
            in _text(driver, "range-note")
        )
        requests = driver.execute_script("return window.psDashboard.requests")
        assert requests["ok"] >= 4 and requests["failed"] == requests["unauthorized"] == 0
        assert browser.console_errors(driver) == []


def test_filters_and_search_stay_server_side_with_ten_thousand_contents(
    driver, app, clock, redis, pool, config, tmp_path
):
    client = app.test_client()
    for batch in range(10):
        items = [
            payload(token=f"t{n}", content=f"item-{n:05d}", cdn=1000 + n, p2p=n)
            for n in range(batch * 1000, (batch + 1) * 1000)
        ]
        assert client.post("/stats/batch", json=items).status_code == 200

    with ServedApp(app) as served:
        _load(driver, served.url + "/dashboard")
        assert len(_table(driver)) == 50  # the top 50, chosen by the service
        assert _text(driver, "live-note") == "50 of 10,000 customer/content pairs"
        assert _table(driver)[0][2] == "item-09999"  # the most traffic

        search = driver.find_element("id", "search")
        search.send_keys("ITEM-0424")  # any case
        browser.wait_until(
            driver,
            "return document.getElementById('live-note').textContent.startsWith('10 of 10 ')",
        )
        assert [row[2] for row in _table(driver)] == [f"item-0424{d}" for d in range(9, -1, -1)]
        assert driver.execute_script("return window.psDashboard.state.live.matched") == 10

        # A row picked: both filters set, every number for that content alone.
        driver.find_element("css selector", "#live-table tbody tr:nth-child(3)").click()
        browser.wait_until(
            driver, "return document.getElementById('total-cdn').dataset.value === '5247'"
        )
        assert driver.find_element("id", "filter-customer").get_attribute("value") == "acme"
        assert driver.find_element("id", "filter-content").get_attribute("value") == "item-04247"
        assert _value(driver, "total-p2p") == "4247"
        assert _text(driver, "total-share") == "44.7 %"
        chart = driver.execute_script("return window.psDashboard.charts.windows")
        assert chart["cdn"][-1] == 5247 and chart["p2p"][-1] == 4247
        driver.save_screenshot(str(tmp_path / "filtered.png"))
        assert browser.console_errors(driver) == []


def test_the_api_token_is_asked_once_and_kept_for_the_tab(driver, config, clock, pool, tmp_path):
    app = create_app(replace(config, api_token="s3cret-token"), clock=clock)
    client = app.test_client()
    clock.now = START
    assert client.post("/stats", json=payload(cdn=1234, p2p=4321)).status_code == 200

    with ServedApp(app) as served:
        driver.get(served.url + "/dashboard")
        browser.wait_until(driver, "return document.getElementById('token-dialog').open")
        # Nothing asked of the API before a token is there: no 401 in the console.
        assert driver.execute_script("return window.psDashboard.requests") == {
            "ok": 0, "failed": 0, "unauthorized": 0
        }  # fmt: skip
        driver.save_screenshot(str(tmp_path / "token.png"))
        driver.find_element("id", "token-input").send_keys("s3cret-token")
        driver.find_element("id", "token-submit").click()
        browser.wait_until(driver, "return window.psDashboard.ready")
        assert _value(driver, "total-cdn") == "1234"
        assert driver.execute_script("return sessionStorage.getItem('payload-stats.token')") == (
            "s3cret-token"
        )

        # Kept for the tab: a reload asks nothing and reads at once.
        _load(driver, served.url + "/dashboard")
        assert not driver.execute_script("return document.getElementById('token-dialog').open")
        assert _value(driver, "total-p2p") == "4321"
        requests = driver.execute_script("return window.psDashboard.requests")
        assert requests["ok"] >= 3 and requests["failed"] == requests["unauthorized"] == 0
        assert browser.console_errors(driver) == []

        # A wrong token: refused, asked again.
        driver.execute_script("sessionStorage.setItem('payload-stats.token', 'wrong')")
        driver.get(served.url + "/dashboard")
        browser.wait_until(driver, "return document.getElementById('token-dialog').open")
        assert driver.find_element("id", "token-refused").is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('payload-stats.token')") is None
        errors = browser.console_errors(driver)
        assert errors and all("401" in e for e in errors)  # the refused request, nothing else


def test_the_page_loads_nothing_from_elsewhere(driver, app, pool):
    with ServedApp(app) as served:
        _load(driver, served.url + "/dashboard")
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
    assert loaded and all(name.startswith(served.url + "/") for name in loaded), loaded
    assert any(name.endswith("/uPlot.iife.min.js") for name in loaded)
    assert browser.console_errors(driver) == []

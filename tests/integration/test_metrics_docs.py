"""GET /metrics, the OpenAPI document, /docs and the JSON logs, on real servers.

Metrics are read back with prometheus_client's own text parser and compared
with exact counts of what each test did. The gunicorn test starts the real
server with two workers and checks that /metrics, whichever worker answers,
reports the sum of both workers' counts (multiprocess mode). Logs are checked
line by line: each is one JSON object with the fields operators rely on.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import pytest
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from payload_stats.buffer import snapshots
from payload_stats.buffer.connection import redis_client
from payload_stats.config import Config
from payload_stats.flush.flusher import flush_once
from payload_stats.flush.scheduler import FlushJob
from payload_stats.logs import JSONFormatter
from payload_stats.postgres.pool import database_pool
from payload_stats.web.app import create_app
from tests.conftest import payload
from tests.support.drive import Crash, crash_at
from tests.support.servers import ROOT, cli_environment, free_port, http, stop, wait_for_http

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/x"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/9"
FIRST_END = 1_795_687_500  # end of the window holding START: 2026-11-26T10:05:00Z

one_shard = pytest.mark.parametrize("shards", [1], ids=["1shard"])

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def single_process_metrics(monkeypatch) -> None:
    """In-process apps report their own registry (no multiprocess directory)."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def parse(text: str) -> Samples:
    """{(sample name, sorted labels): value}; raises if the text is not valid."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            k = (s.name, tuple(sorted(s.labels.items())))
            assert k not in out, f"sample {k} appears twice"
            out[k] = s.value
    return out


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: Samples, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def post(client, body: Any, **kwargs: Any):
    return client.post("/stats", json=body, **kwargs)


# --- request metrics -----------------------------------------------------------


def test_payloads_accepted_duplicate_and_rejected_by_reason(config, clock, redis):
    client = create_app(replace(config, max_body_bytes=2048), clock=clock).test_client()
    before = scrape(client)
    assert value(before, "payload_stats_payloads_accepted_total") == 0
    assert value(before, "payload_stats_payloads_duplicate_total") == 0
    assert labelled(before, "payload_stats_payloads_rejected_total") == {}

    for i in range(3):
        assert post(client, payload(token=f"t{i}")).status_code == 200
    retry = post(client, payload(token="t1"))  # same token and sessionDuration: a retry
    assert retry.get_json() == {"accepted": 0, "duplicates": 1}
    batch = client.post("/stats/batch", json=[payload(token="b1"), payload(token="b2")])
    assert batch.get_json() == {"accepted": 2, "duplicates": 0}
    assert client.post("/stats", data=b"{", content_type="application/json").status_code == 400
    assert client.post("/stats", data=b"[1,", content_type="application/json").status_code == 400
    missing = payload()
    del missing["cdn"]
    assert post(client, missing).status_code == 400
    too_big = json.dumps(payload(token="big", padding="x" * 5000)).encode()
    assert client.post("/stats", data=too_big, content_type="application/json").status_code == 413
    # Read-side errors are not payload rejections.
    assert client.get("/stats", query_string={"limit": "0"}).status_code == 400

    after = scrape(client)
    assert value(after, "payload_stats_payloads_accepted_total") == 5
    assert value(after, "payload_stats_payloads_duplicate_total") == 1
    assert labelled(after, "payload_stats_payloads_rejected_total") == {
        (("reason", "invalid_json"),): 2,
        (("reason", "invalid_payload"),): 1,
        (("reason", "request_entity_too_large"),): 1,
    }


def test_rejected_batch_and_unauthorized_are_counted(config, clock, redis):
    client = create_app(replace(config, ingest_token="i"), clock=clock).test_client()
    assert post(client, payload()).status_code == 401
    good = {"Authorization": "Bearer i"}
    bad_batch = client.post("/stats/batch", json=[payload(), {"token": "x"}], headers=good)
    assert bad_batch.status_code == 400
    assert client.post("/stats/batch", json=[], headers=good).status_code == 400
    samples = scrape(client)
    assert labelled(samples, "payload_stats_payloads_rejected_total") == {
        (("reason", "unauthorized"),): 1,
        (("reason", "invalid_payload"),): 1,
        (("reason", "invalid_batch"),): 1,
    }
    assert value(samples, "payload_stats_payloads_accepted_total") == 0


def test_latency_histogram_is_labelled_by_route_pattern(config, clock, redis, pool):
    client = create_app(config, clock=clock).test_client()
    for i in range(2):
        assert post(client, payload(token=f"t{i}")).status_code == 200
    assert post(client, {"token": "x"}).status_code == 400
    assert client.get("/nope").status_code == 404
    assert client.get("/nope/again?x=1").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/docs/assets/not-there.js").status_code == 404
    assert client.get("/stats", query_string={"customer": "a"}).status_code == 200

    samples = scrape(client)
    counts = labelled(samples, "payload_stats_request_duration_seconds_count")
    assert counts == {
        (("endpoint", "/stats"), ("method", "POST"), ("status", "200")): 2,
        (("endpoint", "/stats"), ("method", "POST"), ("status", "400")): 1,
        (("endpoint", "unmatched"), ("method", "GET"), ("status", "404")): 2,
        (("endpoint", "/healthz"), ("method", "GET"), ("status", "200")): 1,
        (("endpoint", "/docs/assets/<name>"), ("method", "GET"), ("status", "200")): 1,
        (("endpoint", "/docs/assets/<name>"), ("method", "GET"), ("status", "404")): 1,
        (("endpoint", "/stats"), ("method", "GET"), ("status", "200")): 1,
    }
    # No series for the raw paths.
    endpoints = {dict(labels).get("endpoint") for (_, labels) in samples}
    assert not {"/nope", "/nope/again", "/docs/assets/swagger-ui.css"} & endpoints
    # A histogram: cumulative buckets ending at +Inf == count, and a sum.
    for labels, count in counts.items():
        buckets = {
            dict(lb)["le"]: v
            for (n, lb), v in samples.items()
            if n == "payload_stats_request_duration_seconds_bucket"
            and tuple(kv for kv in lb if kv[0] != "le") == labels
        }
        assert buckets["+Inf"] == count
        ordered = [buckets[le] for le in sorted(buckets, key=float)]
        assert ordered == sorted(ordered)
        assert 0 <= samples[("payload_stats_request_duration_seconds_sum", labels)] < 30
    # The scrape itself is counted once it has been answered.
    again = labelled(scrape(client), "payload_stats_request_duration_seconds_count")
    assert again[(("endpoint", "/metrics"), ("method", "GET"), ("status", "200"))] == 1


# --- flush metrics ---------------------------------------------------------------


def test_flush_metrics_windows_pending_and_oldest_age(config, clock, redis, pool):
    client = create_app(config, clock=clock).test_client()
    other_replica = create_app(config, clock=clock).test_client()
    samples = scrape(client)
    for name in (
        "payload_stats_flush_runs_total",
        "payload_stats_flush_failures_total",
        "payload_stats_flush_rows_total",
        "payload_stats_windows_pending",
        "payload_stats_oldest_unflushed_window_age_seconds",
        "payload_stats_flush_last_success_timestamp_seconds",
    ):
        assert value(samples, name) == 0, name
    assert value(samples, "payload_stats_redis_up") == 1

    # Window 10:00-10:05: three rows; window 10:05-10:10: two rows.
    for i, customer in enumerate(("a", "b", "c")):
        assert post(client, payload(token=f"w0-{i}", customer=customer)).status_code == 200
    # The open window is not pending.
    samples = scrape(client)
    assert value(samples, "payload_stats_windows_pending") == 0
    assert value(samples, "payload_stats_oldest_unflushed_window_age_seconds") == 0
    clock.advance(300)
    for i, customer in enumerate(("a", "d")):
        assert post(client, payload(token=f"w1-{i}", customer=customer)).status_code == 200

    clock.now = FIRST_END + 300 + 2  # 10:10:02: both closed; the second still in its grace
    samples = scrape(client)
    assert value(samples, "payload_stats_windows_pending") == 2
    assert value(samples, "payload_stats_oldest_unflushed_window_age_seconds") == 302

    job = FlushJob(redis, pool, config, clock)
    job()  # flushes 10:05 only
    samples = scrape(client)
    assert value(samples, "payload_stats_flush_runs_total") == 1
    assert value(samples, "payload_stats_flush_rows_total") == 3
    assert value(samples, "payload_stats_flush_failures_total") == 0
    assert value(samples, "payload_stats_windows_pending") == 1
    assert value(samples, "payload_stats_oldest_unflushed_window_age_seconds") == 2
    assert (
        abs(value(samples, "payload_stats_flush_last_success_timestamp_seconds") - time.time()) < 60
    )
    assert 0 <= value(samples, "payload_stats_flush_duration_seconds") < 30

    clock.now = FIRST_END + 300 + 30
    job()  # flushes 10:10
    samples = scrape(client)
    assert value(samples, "payload_stats_flush_runs_total") == 2
    assert value(samples, "payload_stats_flush_rows_total") == 5
    assert value(samples, "payload_stats_windows_pending") == 0
    assert value(samples, "payload_stats_oldest_unflushed_window_age_seconds") == 0

    # A failed run (PostgreSQL down) is a failure, not a run.
    broken = database_pool(replace(config, database_url=UNREACHABLE_DATABASE_URL), 1)
    assert post(client, payload(token="w2", customer="e")).status_code == 200
    clock.advance(300)
    FlushJob(redis, broken, config, clock)()
    samples = scrape(client)
    assert value(samples, "payload_stats_flush_failures_total") == 1
    assert value(samples, "payload_stats_flush_runs_total") == 2
    assert value(samples, "payload_stats_windows_pending") == 1
    assert value(samples, "payload_stats_oldest_unflushed_window_age_seconds") == 30
    # Every replica reads the same flush figures from Redis.
    assert {
        k: v for k, v in scrape(other_replica).items() if "flush" in k[0] or "window" in k[0]
    } == {k: v for k, v in samples.items() if "flush" in k[0] or "window" in k[0]}


def test_frozen_snapshots_are_pending(config, clock, redis, pool):
    client = create_app(config, clock=clock).test_client()
    assert post(client, payload()).status_code == 200
    clock.now = FIRST_END + 45
    with pytest.raises(Crash):
        flush_once(redis, pool, config, clock, failpoint=crash_at("after_freeze"))
    assert snapshots.pending_snapshots(redis, config)
    samples = scrape(client)
    assert value(samples, "payload_stats_windows_pending") == 1
    assert value(samples, "payload_stats_oldest_unflushed_window_age_seconds") == 45


def test_redis_down_is_reported_not_a_500(config, clock):
    client = create_app(replace(config, redis_url=UNREACHABLE_REDIS_URL), clock=clock).test_client()
    samples = scrape(client)
    assert value(samples, "payload_stats_redis_up") == 0
    assert value(samples, "payload_stats_payloads_accepted_total") == 0


# --- /metrics under gunicorn with two workers --------------------------------------


def _per_worker(
    metrics_dir: Path, scratch: Path, kind: str, sample: str, **labels: str
) -> dict[str, float]:
    """{worker pid: value of ``sample``} from each worker's own multiprocess file."""
    out = {}
    for path in sorted(metrics_dir.glob(f"{kind}_*.db")):
        alone = scratch / path.stem
        shutil.rmtree(alone, ignore_errors=True)
        alone.mkdir(parents=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        for family in registry.collect():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    out[path.stem] = out.get(path.stem, 0) + s.value
    return out


@pytest.fixture
def gunicorn(config: Config, pool, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``gunicorn -c python:payload_stats.web.gunicorn_conf --workers 2 app:create_app()``; yields
    its base URL and its PROMETHEUS_MULTIPROC_DIR."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    port = free_port()
    env = cli_environment(
        config, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), STATS_LOG_FORMAT="json"
    )
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "python:payload_stats.web.gunicorn_conf",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "payload_stats.web.app:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(f"{base}/healthz", proc)
        except (TimeoutError, RuntimeError):
            raise AssertionError(log.read_text()) from None
        yield base, metrics_dir
    finally:
        stop(proc)


def test_metrics_sum_both_gunicorn_workers(gunicorn, tmp_path):
    base, metrics_dir = gunicorn
    scratch = tmp_path / "scratch"
    sent = 0

    def send(i: int) -> int:
        body = json.dumps(payload(token=f"g-{i}")).encode()
        return http("POST", f"{base}/stats", body)[0]

    with ThreadPoolExecutor(8) as pool:
        # Concurrent requests on new connections spread over the two workers;
        # at least 40, and on until each worker has counted some (at most 320).
        for round_ in range(40):
            statuses = list(pool.map(send, range(sent, sent + 8)))
            assert statuses == [200] * 8
            sent += 8
            accepted = _per_worker(
                metrics_dir, scratch, "counter", "payload_stats_payloads_accepted_total"
            )
            if round_ >= 4 and sum(1 for v in accepted.values() if v > 0) >= 2:
                break
        assert sum(1 for v in accepted.values() if v > 0) == 2, accepted
        assert sum(accepted.values()) == sent

        def metric(_: int) -> float:
            status, body = http("GET", f"{base}/metrics")
            assert status == 200
            return value(parse(body.decode()), "payload_stats_payloads_accepted_total")

        # Ask until both workers have answered /metrics; every answer is the total.
        for _ in range(40):
            assert list(pool.map(metric, range(6))) == [sent] * 6
            answered = _per_worker(
                metrics_dir,
                scratch,
                "histogram",
                "payload_stats_request_duration_seconds_count",
                endpoint="/metrics",
            )
            if sum(1 for v in answered.values() if v > 0) >= 2:
                break
        assert sum(1 for v in answered.values() if v > 0) == 2, answered


# --- OpenAPI and /docs -----------------------------------------------------------


@one_shard
def test_openapi_document_validates(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.is_json
    spec = response.get_json()
    validate(spec)
    assert spec["openapi"].startswith("3.")


def _routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route the app serves."""
    found = set()
    for rule in app.url_map.iter_rules():
        # Files: Flask's static route, Swagger UI's and the dashboard's assets.
        if rule.endpoint in ("static", "dashboard.static") or rule.rule == "/docs/assets/<name>":
            continue
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((path, method.lower()))
    return found


@one_shard
def test_openapi_document_lists_every_route(app):
    spec = app.test_client().get("/openapi.json").get_json()
    documented = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    }
    routes = _routes(app)
    assert {("/stats", "get"), ("/stats", "post"), ("/stats/live", "get")} <= routes
    assert sorted(routes - documented) == []
    assert sorted(documented - routes) == []


@one_shard
def test_read_endpoints_document_their_parameters_and_errors(client):
    spec = client.get("/openapi.json").get_json()
    history = spec["paths"]["/stats"]["get"]
    names = {p["name"] for p in history["parameters"]}
    assert names == {
        "customer",
        "content",
        "from",
        "to",
        "order",
        "limit",
        "cursor",
        "group_by",
        "bucket",
        "format",
    }
    assert {"200", "400", "401", "503"} <= set(history["responses"])
    assert set(history["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    live = spec["paths"]["/stats/live"]["get"]
    assert {p["name"] for p in live["parameters"]} == {"customer", "content", "limit", "search"}
    payload_schema = spec["components"]["schemas"]["Payload"]
    assert set(payload_schema["required"]) == {
        "token",
        "customer",
        "content",
        "timespan",
        "p2p",
        "cdn",
        "sessionDuration",
    }


def _references(page: str) -> list[str]:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    refs += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", page)
    return refs


@one_shard
def test_docs_page_uses_only_local_assets(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "SwaggerUIBundle" in page or "redoc" in page.lower()
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert not re.search(r"""(?:src|href)\s*=\s*["']//""", page)  # protocol-relative
    refs = _references(page)
    assert any(r.endswith(".js") for r in refs) and any(r.endswith(".css") for r in refs)
    for ref in refs:
        url = urlparse(urljoin("http://localhost/docs", ref))
        assert url.netloc == "localhost", ref
        asset = client.get(url.path, query_string=url.query)
        assert asset.status_code == 200, ref
        assert asset.get_data(), ref
        if ref.endswith(".css"):
            css = asset.get_data(as_text=True)
            assert asset.mimetype == "text/css"
            # Nothing a stylesheet would fetch from elsewhere.
            assert not re.search(r"""(?:url\(\s*["']?|@import\s+["'])\s*(?:https?:)?//""", css)
        if ref.endswith(".js"):
            assert "javascript" in asset.mimetype
    assert "openapi.json" in {
        urlparse(urljoin("http://localhost/docs", r)).path.lstrip("/") for r in refs
    }


@one_shard
def test_docs_page_turns_off_the_online_validator_badge(client):
    """Swagger UI shows a badge image from validator.swagger.io unless told not to
    (validatorUrl null or "none"): an external request from any non-localhost host."""
    bundle = client.get("/docs/assets/swagger-ui-bundle.js").get_data(as_text=True)
    assert 'validatorUrl:"https://validator.swagger.io/validator"' in bundle
    page = client.get("/docs").get_data(as_text=True)
    assert re.search(r"""validatorUrl["']?\s*:\s*(?:null|["']none["'])""", page), page


@one_shard
def test_docs_assets_serve_nothing_outside_the_bundle(client):
    for path in (
        "/docs/assets/..%2F..%2F__init__.py",
        "/docs/assets/%2E%2E%2Fopenapi.py",
        "/docs/assets/..%5C__init__.py",
    ):
        assert client.get(path).status_code == 404, path


# --- JSON logs -------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything the ``app`` loggers write at INFO and above, through JSONFormatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("payload_stats")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Each line one JSON object (and nothing else)."""
    out = []
    for line in stream.getvalue().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict)
        out.append(entry)
    return out


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_json_formatter_one_object_per_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("tests.json_formatter")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        when = datetime(2026, 11, 26, 10, 5, tzinfo=timezone.utc)
        logger.info(
            "something_happened",
            extra={"rows": 3, "reason": "two\nlines", "ratio": 0.5, "when": when, "none": None},
        )
        logger.warning("with %s args", "lazy")
        try:
            raise ValueError("boom\nagain")
        except ValueError:
            logger.exception("it_failed", extra={"step": "x"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("\n") == 3
    first, second, third = lines(stream)
    assert set(first) == {
        "timestamp",
        "level",
        "logger",
        "event",
        "rows",
        "reason",
        "ratio",
        "when",
        "none",
    }
    assert TIMESTAMP.fullmatch(first["timestamp"])
    assert (
        abs(
            datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00")).timestamp()
            - time.time()
        )
        < 60
    )
    assert (first["level"], first["logger"], first["event"]) == (
        "info",
        "tests.json_formatter",
        "something_happened",
    )
    assert (first["rows"], first["reason"], first["ratio"], first["none"]) == (
        3,
        "two\nlines",
        0.5,
        None,
    )
    assert first["when"] == when.isoformat()
    assert (second["level"], second["event"]) == ("warning", "with lazy args")
    assert (third["level"], third["event"], third["step"]) == ("error", "it_failed", "x")
    assert "ValueError: boom" in third["exception"]


def test_flush_logs_event_flush_with_its_figures(config, clock, redis, pool, json_log):
    client = create_app(config, clock=clock).test_client()
    sent = [
        payload(token="secret-token-1", customer="a", cdn=100, p2p=300),
        payload(token="secret-token-2", customer="b", cdn=10, p2p=0, sessionDuration=900_000),
    ]
    for body in sent:
        assert post(client, body).status_code == 200
    clock.advance(300)
    late = payload(token="secret-token-3", customer="a", cdn=1, p2p=2)
    assert post(client, late).status_code == 200
    clock.now = FIRST_END + 300 + 7  # both windows flushable; the oldest ended 307 s ago
    FlushJob(redis, pool, config, clock)()

    flushes = [e for e in lines(json_log) if e["event"] == "flush"]
    assert len(flushes) == 1
    entry = flushes[0]
    assert entry["level"] == "info"
    assert entry["logger"] == "payload_stats.flush.flusher"
    assert TIMESTAMP.fullmatch(entry["timestamp"])
    assert {k: entry[k] for k in ("windows", "rows", "cdn", "p2p", "sessions", "lag_s")} == {
        "windows": 2,
        "rows": 3,
        "cdn": 111,
        "p2p": 302,
        "sessions": 2,
        "lag_s": 307.0,
    }
    assert isinstance(entry["duration_ms"], int) and 0 <= entry["duration_ms"] < 30_000
    # No payload content at info level.
    assert "secret-token" not in json_log.getvalue()


def test_failed_flush_logs_flush_failed_with_the_reason(config, clock, redis, pool, json_log):
    broken = database_pool(replace(config, database_url=UNREACHABLE_DATABASE_URL), 1)
    FlushJob(redis, broken, config, clock)()
    failures = [e for e in lines(json_log) if e["event"] == "flush_failed"]
    assert len(failures) == 1
    entry = failures[0]
    assert entry["level"] == "error"
    assert entry["logger"] == "payload_stats.flush.scheduler"
    assert "refused" in entry["reason"].lower() or "port 1" in entry["reason"]
    assert "\n" not in entry["reason"]

    # Redis down: the reason says so.
    down = redis_client(replace(config, redis_url=UNREACHABLE_REDIS_URL))
    FlushJob(down, pool, config, clock)()
    failures = [e for e in lines(json_log) if e["event"] == "flush_failed"]
    assert len(failures) == 2
    assert "refused" in failures[1]["reason"].lower() or ":1" in failures[1]["reason"]
    assert "\n" not in failures[1]["reason"]
    assert not [e for e in lines(json_log) if e["event"] == "flush"]

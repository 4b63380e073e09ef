"""The nginx service of docker-compose.yml runs deploy/nginx.conf in front of web.

The configuration itself is exercised by tests/integration/test_slow_clients.py
(Debian's nginx with this very file); here, what it promises on paper.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from payload_stats.config import Config

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
CONF = (ROOT / "deploy" / "nginx.conf").read_text()


def directive(name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;{{]+);", CONF, re.M)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_nginx_runs_the_shipped_configuration_in_front_of_web(compose):
    nginx = compose["services"]["nginx"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert "web" in nginx["depends_on"]
    [port] = nginx["ports"]
    assert port.startswith("127.0.0.1:") and port.endswith(":8080")
    assert directive("listen") == ["8080 backlog=4096"]
    assert directive("server") == ["web:8000"]
    # web is reachable through nginx only.
    assert "ports" not in compose["services"]["web"]
    assert compose["services"]["web"]["expose"] == ["8000"]


def test_the_body_limit_is_stats_max_body_bytes_default():
    assert directive("client_max_body_size") == ["1m"]
    assert Config().max_body_bytes == 1024 * 1024
    # Held in memory whole: never a temporary file, and gunicorn sees complete bodies.
    assert directive("client_body_buffer_size") == ["1m"]
    assert directive("proxy_request_buffering") == ["on"]


def test_header_and_body_timeouts_and_keepalive_upstream():
    assert directive("client_header_timeout") == ["10s"]
    assert directive("client_body_timeout") == ["10s"]
    assert directive("keepalive") == ["32"]
    assert directive("proxy_http_version") == ["1.1"]
    assert 'Connection ""' in directive("proxy_set_header")
    # Request bodies, gzip ones included, are passed through untouched.
    assert directive("gzip") == ["off"]
    assert not directive("gunzip")

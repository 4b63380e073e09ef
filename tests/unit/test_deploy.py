"""The Docker deployment, checked without a Docker engine.

docker-compose.yml is parsed (PyYAML) and held to what the README promises:
the services, Redis durability, the commands, the configuration.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from payload_stats.config import VARIABLES

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("init-db", "web", "scheduler")
# Unset on purpose by default: a failpoint is for tests, tokens are opt-in.
OPTIONAL = {"STATS_FAILPOINT", "STATS_API_TOKEN", "STATS_INGEST_TOKEN"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"([A-Z_]+)=(.*)", line.strip())
        if match:
            found[match[1]] = match[2]
    return found


def _documented_commands() -> set[str]:
    return set(re.findall(r"payload-stats ([a-z-]+)", (ROOT / "README.md").read_text()))


def test_the_stack_has_its_services(compose):
    assert set(compose["services"]) == {
        "redis",
        "postgres",
        "init-db",
        "web",
        "scheduler",
        "nginx",
    }


def test_redis_keeps_every_write_on_disk(compose):
    command = compose["services"]["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert compose["services"]["redis"]["volumes"] == ["redis-data:/data"]


def test_postgres_data_is_on_a_named_volume(compose):
    volumes = compose["services"]["postgres"]["volumes"]
    assert volumes == ["postgres-data:/var/lib/postgresql/data"]
    assert "postgres-data" in compose["volumes"]


def test_app_services_run_documented_commands(compose):
    documented = _documented_commands()
    for name in APP_SERVICES:
        command = compose["services"][name]["command"]
        assert command == [name], name
        assert name in documented


def test_init_db_runs_once_and_the_others_wait_for_it(compose):
    services = compose["services"]
    assert services["init-db"]["restart"] == "no"
    for name in ("web", "scheduler"):
        assert services[name]["depends_on"]["init-db"] == {
            "condition": "service_completed_successfully"
        }


def test_one_scheduler(compose):
    assert compose["services"]["scheduler"]["deploy"]["replicas"] == 1


def test_ports_are_bound_to_localhost(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_every_variable_the_app_reads_is_set_for_the_app(compose):
    example = _env_example()
    for name in APP_SERVICES:
        service = compose["services"][name]
        env_files = [entry["path"] for entry in service["env_file"]]
        assert ".env.example" in env_files
        settings = {**example, **service["environment"]}
        missing = set(VARIABLES) - OPTIONAL - set(settings)
        assert not missing, (name, missing)
        assert settings["REDIS_URL"].startswith("redis://redis:")
        assert "@postgres:5432/" in settings["DATABASE_URL"]
        assert settings["STATS_BIND"] == "0.0.0.0:8000"


def test_env_example_documents_every_variable():
    text = (ROOT / ".env.example").read_text()
    for name in VARIABLES:
        assert re.search(rf"^#? ?{name}=", text, re.M), name


def test_dockerfile_runs_the_documented_command_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M)[1])
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M)[1])
    assert entrypoint == ["payload-stats"]
    assert cmd == ["web"] and "web" in _documented_commands()
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert re.search(r"^FROM python:[\d.]+-slim", text, re.M)

"""The Docker deployment, checked without a Docker engine.

docker-compose.yml is parsed (PyYAML) and held to what the README promises:
the services, Redis durability, the commands, the configuration.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from payload_stats.config import VARIABLES

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("init-db", "web", "scheduler")
NODES = tuple(f"redis-node-{i}" for i in range(1, 7))
CLUSTER_APP_SERVICES = ("init-db-cluster", "web-cluster", "scheduler-cluster")
CLUSTER_SERVICES = (*NODES, "redis-cluster-create", *CLUSTER_APP_SERVICES, "nginx-cluster")
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
        *CLUSTER_SERVICES,
    }


def test_the_cluster_services_are_in_the_cluster_profile_only(compose):
    for name, service in compose["services"].items():
        expected = ["cluster"] if name in CLUSTER_SERVICES else None
        assert service.get("profiles") == expected, name


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
    for name in APP_SERVICES + CLUSTER_APP_SERVICES:
        command = compose["services"][name]["command"]
        role = name.removesuffix("-cluster")
        assert command == [role], name
        assert role in documented


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


def test_the_app_services_take_the_defaults_and_an_optional_env_file(compose):
    for name in APP_SERVICES + CLUSTER_APP_SERVICES:
        service = compose["services"][name]
        assert service["env_file"] == [{"path": ".env", "required": False}]
        settings = service["environment"]
        if name in APP_SERVICES:
            assert settings["REDIS_URL"].startswith("redis://redis:")
        assert "@postgres:5432/" in settings["DATABASE_URL"]
        assert settings["STATS_BIND"] == "0.0.0.0:8000"
        # Everything else is Config's default unless .env says otherwise.
        assert set(settings) <= set(VARIABLES), (name, set(settings) - set(VARIABLES))


def test_env_example_changes_nothing_when_copied():
    """Every line of .env.example is commented out, and shows the default."""
    from dotenv import dotenv_values

    from payload_stats.config import Config

    assert dotenv_values(ROOT / ".env.example") == {}
    defaults = Config()
    shown = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"# ([A-Z_]+)=(.*)", line)
        if match:
            shown[match[1]] = match[2]
    assert set(shown) >= set(VARIABLES)
    for name, value in shown.items():
        if value == "":
            continue  # unset: the default depends on other settings or on the command
        parsed = Config.from_env({name: value})
        assert parsed == replace(
            defaults, **{k: getattr(parsed, k) for k in ("redis_url", "database_url")}
        ), name
    assert shown["REDIS_URL"] and shown["DATABASE_URL"]  # shown, commented: embedded when unset


def _flags(command: list[str]) -> dict[str, str]:
    assert command[0] == "redis-server"
    return dict(zip(command[1::2], command[2::2], strict=True))


def _node_address(service: dict) -> str:
    (network,) = service["networks"].values()
    return network["ipv4_address"]


def test_six_cluster_nodes_each_durable_on_its_own_volume(compose):
    subnet = compose["networks"]["redis-cluster"]["ipam"]["config"][0]["subnet"]
    prefix = subnet.rsplit(".", 1)[0] + "."
    addresses = set()
    for name in NODES:
        service = compose["services"][name]
        flags = _flags(service["command"])
        assert flags["--cluster-enabled"] == "yes"
        assert flags["--appendonly"] == "yes"
        assert flags["--appendfsync"] == "everysec"
        assert flags["--maxmemory-policy"] == "noeviction"
        # The live masters' shards keep serving while another master is down.
        assert flags["--cluster-require-full-coverage"] == "no"
        assert service["volumes"] == [f"{name}-data:/data"]
        assert f"{name}-data" in compose["volumes"]
        assert service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
        assert list(service["networks"]) == ["redis-cluster"]
        assert _node_address(service).startswith(prefix)
        addresses.add(_node_address(service))
    assert len(addresses) == len(NODES)


def test_a_one_shot_job_creates_the_cluster_from_every_node(compose):
    job = compose["services"]["redis-cluster-create"]
    assert job["restart"] == "no"
    script = job["command"][-1]
    create = script[script.index("redis-cli --cluster create") :].split()
    nodes = {f"{_node_address(compose['services'][n])}:6379" for n in NODES}
    assert set(create[3:9]) == nodes
    assert create[9:] == ["--cluster-replicas", "1", "--cluster-yes"]
    # A cluster already formed (a later start) is left as it is.
    assert script.index("cluster_state:ok") < script.index("--cluster create")
    for name in NODES:
        assert job["depends_on"][name] == {"condition": "service_healthy"}


def test_cluster_app_services_use_the_cluster(compose):
    services = compose["services"]
    nodes = {_node_address(services[n]) for n in NODES}
    for name in CLUSTER_APP_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["STATS_REDIS_CLUSTER"] == "1"
        host, port = env["REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
        assert host in nodes and port == "6379"
        assert env["REDIS_URL"].endswith("/0")
        assert set(service["networks"]) == {"default", "redis-cluster"}
    assert services["init-db-cluster"]["depends_on"]["redis-cluster-create"] == {
        "condition": "service_completed_successfully"
    }
    for name in ("web-cluster", "scheduler-cluster"):
        assert services[name]["depends_on"]["init-db-cluster"] == {
            "condition": "service_completed_successfully"
        }
    assert services["scheduler-cluster"]["deploy"]["replicas"] == 1


def test_nginx_cluster_fronts_web_cluster_as_nginx_fronts_web(compose):
    services = compose["services"]
    nginx, proxy = services["nginx"], services["nginx-cluster"]
    assert proxy["image"] == nginx["image"] and proxy["volumes"] == nginx["volumes"]
    assert proxy["depends_on"] == {"web-cluster": {"condition": "service_healthy"}}
    [port] = proxy["ports"]
    assert port.startswith("127.0.0.1:") and port.endswith(":8080")
    assert port != nginx["ports"][0]
    web = services["web-cluster"]
    # deploy/nginx.conf's upstream is "web": web-cluster answers to that name.
    assert web["networks"]["default"]["aliases"] == ["web"]
    assert "ports" not in web and web["expose"] == ["8000"]


def test_the_readme_documents_the_cluster_profile(compose):
    text = (ROOT / "README.md").read_text()
    assert "docker compose --profile cluster up -d --build nginx-cluster scheduler-cluster" in text
    assert "STATS_REDIS_CLUSTER" in text


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

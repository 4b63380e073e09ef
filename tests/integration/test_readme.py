"""The README runs as written: its curl lines against a live service, the files
and commands it names, the quick start and the test command CI runs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from payload_stats.ingest.schema import PayloadSchema
from payload_stats.ops.cli import cli
from payload_stats.web.app import create_app
from tests.support.web import ServedApp

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def commands(block: str) -> list[tuple[str, str | None]]:
    """The block's commands, continued lines joined, each with the ``# ...``
    comment line that follows it (the README's way of showing an answer)."""
    found: list[tuple[str, str | None]] = []
    current = ""
    for line in block.splitlines():
        if current:
            current += "\n" + line
        elif line.startswith("# ") and found and found[-1][1] is None:
            found[-1] = (found[-1][0], line[2:])
            continue
        else:
            current = line
        # A line ending in a backslash, or inside a quoted string, goes on.
        if not current.endswith("\\") and current.count("'") % 2 == 0:
            if current.strip() and not current.lstrip().startswith("#"):
                found.append((current, None))
            current = ""
    return found


CURL = [
    (command, shown)
    for block in shell_blocks(README)
    for command, shown in commands(block)
    if "curl" in command and "127.0.0.1:8000" in command
]


def test_the_readme_has_curl_examples_to_run():
    assert len(CURL) >= 10
    assert any("examples/batch.json" in c for c, _ in CURL)
    assert any("date -u -d" in c for c, _ in CURL)  # relative dates, not stale ones


def test_every_curl_example_runs_against_a_live_service(config, pool):
    app = create_app(config)  # the real clock: the README's dates are relative to now
    outputs = []
    with ServedApp(app) as served:
        for command, shown in CURL:
            line = command.replace("127.0.0.1:8000", f"127.0.0.1:{served.port}")
            done = subprocess.run(
                ["bash", "-c", "set -euo pipefail\n" + line],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                env={"PATH": "/usr/bin:/bin", "STATS_API_TOKEN": "unused"},
            )
            assert done.returncode == 0, (command, done.stderr)
            body = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
            if done.stdout.startswith("time,"):  # a CSV export: its header, then rows
                assert "cdn,p2p,sessions,payloads" in done.stdout.splitlines()[0], command
            elif body.startswith(("{", "[")):
                answer = json.loads(body)
                assert "error" not in answer, (command, answer)
                if shown is not None and shown.startswith("{"):
                    assert answer == json.loads(shown), command
            else:
                assert "HTTP/1.1 200" in done.stdout, (command, done.stdout)
            outputs.append(body)
    # What the examples posted is there to read back.
    live = json.loads(next(o for c, o in zip(CURL, outputs, strict=True) if "/stats/live" in c[0]))
    assert {r["customer"] for r in live["rows"]} == {"acme-tv"}


def test_the_example_batch_is_valid():
    items = json.loads((ROOT / "examples" / "batch.json").read_text())
    assert 1 <= len(items) <= 1000
    for item in items:
        assert PayloadSchema().validate(item) == {}, item


def test_every_command_and_file_the_readme_names_exists():
    documented = set(re.findall(r"payload-stats ([a-z][a-z-]+)", README))
    assert documented <= set(cli.commands), documented - set(cli.commands)
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in link:
            assert (ROOT / link).exists(), link
    picture = ROOT / "docs" / "dashboard.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size < 300_000
    for name in re.findall(r"`((?:examples|scripts|deploy|docs)/[\w./-]+)`", README):
        assert (ROOT / name).exists(), name


def test_the_quick_start_uses_one_venv_and_ci_runs_the_test_command_verbatim():
    blocks = shell_blocks(README)
    run = "python3 -m venv .venv && . .venv/bin/activate\n" + (
        "pip install -e '.[embedded]' && payload-stats serve --demo\n"
    )
    test = "python3 -m venv .venv && . .venv/bin/activate\n" + (
        "pip install -e '.[test]' && ruff check . && ruff format --check . && pytest\n"
    )
    assert run in blocks and test in blocks
    assert blocks.index(run) < blocks.index(test)
    assert test in (ROOT / ".ci" / "run").read_text()
    assert "http://127.0.0.1:8000/dashboard" in README
    for needed in ("--bind", "STATS_BIND", "psql", "within a minute", "payload-stats demo"):
        assert needed in README, needed

"""A short run of ``scripts/soak.py`` against the test servers.

The script runs the real service (gunicorn web, a scheduler it SIGKILLs and
restarts at random, or lets crash at each failpoint), sends load from several processes and compares
PostgreSQL with its own ledger exactly; it exits 0 only when nothing was lost
or counted twice. It works under its own key prefix and PostgreSQL schema and
removes both.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_soak_short_run_has_no_mismatch(redis_url: str, database_url: str):
    seed = random.randrange(2**32)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "soak.py"),
            "--duration",
            "20",
            "--processes",
            "3",
            "--rate",
            "100",
            "--window",
            "2",
            "--seed",
            str(seed),
            "--redis-url",
            redis_url,
            "--database-url",
            database_url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(done.stdout, done.stderr)  # shown by pytest when the test fails
    assert done.returncode == 0, f"seed {seed}"
    assert "mismatches: 0" in done.stdout.splitlines()
    # The run went through the crash the ledger is for: a flusher dead after its commit.
    assert re.search(r"^scheduler kills: .*'after_commit': [1-9]", done.stdout, re.M)


@pytest.mark.slow
def test_hostile_soak_still_counts_every_accepted_payload_once(database_url: str):
    """``--hostile``: counters pushed past 2^63 - 1, a Redis filled to its limit
    (its own), a victim's token posted under another customer. ``stats`` plus
    the isolated rows must match the model exactly."""
    seed = random.randrange(2**32)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "soak.py"),
            "--hostile",
            "--duration",
            "15",
            "--processes",
            "2",
            "--rate",
            "100",
            "--seed",
            str(seed),
            "--database-url",
            database_url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(done.stdout, done.stderr)  # shown by pytest when the test fails
    assert done.returncode == 0, f"seed {seed}"
    assert "mismatches: 0" in done.stdout.splitlines()
    hostile = re.search(
        r"^hostile: (\d+) batches answered, (\d+) rows isolated, (\d+) answers buffer_full",
        done.stdout,
        re.M,
    )
    assert hostile and int(hostile[2]) > 0 and int(hostile[3]) > 0

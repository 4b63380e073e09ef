"""``payload-stats flush`` exits 3 while isolated rows wait; ``payload-stats quarantine``
lists, merges and discards them. Subprocesses on the real servers; payloads are
written in process at a past instant (windows of 1 s, grace 0: closed already).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from payload_stats.buffer import keys as k_
from payload_stats.buffer.ingest import record
from payload_stats.buffer.keys import Keys
from payload_stats.buffer.scripts import Scripts
from tests.conftest import payload, write_rows
from tests.integration.test_exactness_support import (
    MAX_BIGINT,
    environment,
    error_line,
    execute,
    only_line,
    quarantine_table,
    stats_table,
)
from tests.support.servers import run_cli

QUARANTINE_LINE = (
    "payload-stats: error: 2 isolated row(s) wait for an operator: see payload-stats quarantine"
)


@pytest.mark.parametrize("shards", [4], ids=["4shards"])
def test_flush_exits_3_until_isolated_rows_are_merged_or_discarded(config, redis, pool, tmp_path):
    config = replace(
        config, window_seconds=1, flush_grace_seconds=0, flush_lock_seconds=1,
        data_dir=str(tmp_path),
    )  # fmt: skip
    env = environment(config)
    quiet = {**env, "STATS_LOG_LEVEL": "CRITICAL"}
    assert run_cli(env, "init-db").returncode == 0

    at = math.floor(time.time()) - 600 + 0.5
    end = math.floor(at) + 1
    stamp = datetime.fromtimestamp(end, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    short = 500  # shorter than the 1 s window: each payload starts a session
    sent = [
        payload(token="t-1", content="movie-1", cdn=10, p2p=1, timespan=100, sessionDuration=short),
        payload(token="t-2", content="movie-2", cdn=20, p2p=2, timespan=200, sessionDuration=short),
        payload(token="t-3", customer="hurt", content="x", cdn=30, p2p=3, timespan=300),
    ]
    record(redis, Scripts(redis), config, sent, at)
    hurt = Keys(config.key_prefix).counters(
        k_.shard_of("t-3", 4), math.floor(at), k_.encode_ident("hurt", "x")
    )
    redis.hset(hurt, "c", "abc")
    near = (MAX_BIGINT - 5, 7, 1, 1, 0)
    write_rows(pool, [(datetime.fromtimestamp(end, tz=timezone.utc), "acme", "movie-1", *near)])

    flushed = run_cli(env, "flush")
    assert flushed.returncode == 3, (flushed.stdout, flushed.stderr)
    lines = flushed.stdout.splitlines()
    assert re.fullmatch(r"flushed 1 window\(s\), 1 row\(s\) in \d+\.\d{3}s \(flush \S+\)", lines[0])
    assert re.fullmatch(
        rf"  {stamp}  rows=1 cdn=20 p2p=2 sessions=1 payloads=1 watch_ms=200 "
        r"lag=\d+\.\ds isolated=2",
        lines[1],
    ), lines
    assert len(lines) == 2
    assert error_line(flushed.stderr) == QUARANTINE_LINE
    assert flushed.stderr.splitlines()[-1] == QUARANTINE_LINE
    assert "flush_quarantined" in flushed.stderr  # the log event, before the line
    assert stats_table(pool) == {
        (end, "acme", "movie-1"): near,
        (end, "acme", "movie-2"): (20, 2, 1, 1, 200),
    }
    unreadable, past = quarantine_table(pool)  # isolated in this order, in one transaction
    assert (unreadable["customer"], unreadable["reason"]) == (
        None,
        "unreadable: invalid literal for int() with base 10: b'abc'",
    )
    assert (past["customer"], past["content"], past["reason"]) == (
        "acme",
        "movie-1",
        "a sum past bigint in stats",
    )

    # Nothing left to flush, yet the rows still wait: exit 3 again.
    again = run_cli(quiet, "flush")
    assert (again.returncode, again.stdout) == (3, "nothing to flush\n")
    assert only_line(again.stderr) == QUARANTINE_LINE

    listed = run_cli(quiet, "quarantine")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"{unreadable['id']}  {stamp}  (unreadable key)  cdn=0 p2p=0 sessions=0 payloads=0 "
        "watch_ms=0  unreadable: invalid literal for int() with base 10: b'abc'",
        f"{past['id']}  {stamp}  acme/movie-1  cdn=10 p2p=1 sessions=1 payloads=1 "
        "watch_ms=100  a sum past bigint in stats",
    ]

    # The row still would pass bigint: refused, nothing changed.
    refused = run_cli(quiet, "quarantine", "merge", str(past["id"]))
    assert (refused.returncode, refused.stdout) == (2, "")
    assert only_line(refused.stderr) == (
        f"payload-stats: error: row {past['id']} still does not fit: it would pass bigint"
    )
    nameless = run_cli(quiet, "quarantine", "merge", str(unreadable["id"]))
    assert (nameless.returncode, nameless.stdout) == (2, "")
    assert only_line(nameless.stderr) == (
        f"payload-stats: error: row {unreadable['id']} did not read as a name: discard it"
    )
    assert stats_table(pool)[end, "acme", "movie-1"] == near
    assert [r["resolved_at"] for r in quarantine_table(pool)] == [None, None]

    # Once the row has room, the merge adds the isolated sums exactly.
    execute(
        pool,
        "UPDATE stats SET cdn = 1000 WHERE customer = 'acme' AND content = 'movie-1'",
    )
    merged = run_cli(quiet, "quarantine", "merge", str(past["id"]))
    assert (merged.returncode, merged.stdout, merged.stderr) == (
        0,
        f"row {past['id']} merged\n",
        "",
    )
    assert stats_table(pool)[end, "acme", "movie-1"] == (1010, 8, 2, 2, 100)
    twice = run_cli(quiet, "quarantine", "merge", str(past["id"]))
    assert twice.returncode == 2
    assert (
        only_line(twice.stderr) == f"payload-stats: error: no unresolved isolated row {past['id']}"
    )
    assert stats_table(pool)[end, "acme", "movie-1"] == (1010, 8, 2, 2, 100)

    still = run_cli(quiet, "flush")
    assert (still.returncode, still.stdout) == (3, "nothing to flush\n")
    assert only_line(still.stderr) == QUARANTINE_LINE.replace("2 isolated", "1 isolated")

    discarded = run_cli(
        quiet, "quarantine", "discard", str(unreadable["id"]), "--reason", "damaged by hand"
    )
    assert (discarded.returncode, discarded.stdout) == (0, f"row {unreadable['id']} discarded\n")
    rows = quarantine_table(pool)
    assert [r["resolution"] for r in rows] == ["discarded: damaged by hand", "merged into stats"]
    assert all(r["resolved_at"] is not None for r in rows)
    # Discarded rows stay on record, with their raw key.
    assert rows[0]["raw_key"].startswith(k_.encode_ident("hurt", "x") + b"\n")

    listed = run_cli(quiet, "quarantine")
    assert (listed.returncode, listed.stdout) == (0, "no isolated rows\n")
    done = run_cli(quiet, "flush")
    assert (done.returncode, done.stdout, done.stderr) == (0, "nothing to flush\n", "")
    assert stats_table(pool) == {
        (end, "acme", "movie-1"): (1010, 8, 2, 2, 100),
        (end, "acme", "movie-2"): (20, 2, 1, 1, 200),
    }

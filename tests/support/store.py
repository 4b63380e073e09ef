"""What Redis and PostgreSQL hold, read for assertions.

Redis is read through ``payload_stats.buffer.keys`` (never hand-written key
names) and only under the test's key prefix.
"""

from __future__ import annotations

import re
from typing import Any

from redis import Redis

from payload_stats.buffer import counters, snapshots
from payload_stats.buffer import keys as k_
from payload_stats.buffer.keys import Keys
from payload_stats.config import Config
from payload_stats.postgres.pool import connection
from tests.support.model import Key, Row

# --- PostgreSQL ----------------------------------------------------------------------------------


def stats_table(pool) -> dict[Key, Row]:
    """Every ``stats`` row: {(window end as unix seconds, customer, content): Row}."""
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM time)::bigint, customer, content, "
            "cdn, p2p, sessions, payloads, watch_ms FROM stats"
        )
        rows = cur.fetchall()
        conn.rollback()
    return {(t, cu, co): Row(*values) for t, cu, co, *values in rows}


def ledger_ids(pool) -> list[str]:
    """The snapshot ids in the flush ledger, sorted."""
    with connection(pool) as conn, conn.cursor() as cur:
        cur.execute("SELECT snapshot_id FROM flush_ledger ORDER BY snapshot_id")
        ids = [row[0] for row in cur.fetchall()]
        conn.rollback()
    return ids


# --- Redis ---------------------------------------------------------------------------------------


def window_counters(redis: Redis, config: Config, k: int) -> dict[tuple[str, str], Row]:
    """The live counters of window ``k``, summed over shards: {(customer, content): Row}."""
    keys = Keys(config.key_prefix)
    rows: dict[tuple[str, str], Row] = {}
    for shard in range(config.shards):
        for ident in redis.lrange(keys.index(shard, k), 0, -1):
            c = counters.from_fields(redis.hgetall(keys.counters(shard, k, ident)))
            row = Row(c.cdn, c.p2p, c.sessions, c.payloads, c.watch_ms)
            pair = k_.decode_ident(ident)
            rows[pair] = rows.get(pair, Row()) + row
    return rows


def keyspace(redis: Redis, prefix: str) -> dict[bytes, tuple[bytes | None, int]]:
    """{key: (DUMP, PTTL)} of every key under ``prefix``."""
    names = sorted(set(redis.scan_iter(match=f"{prefix}:*", count=1000)))
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.dump(name)
        pipe.pttl(name)
    replies = pipe.execute()
    return {name: (replies[2 * i], replies[2 * i + 1]) for i, name in enumerate(names)}


def assert_unchanged(redis: Redis, prefix: str, before: dict[bytes, Any]) -> None:
    """Nothing under ``prefix`` was created, deleted, changed or given a longer life."""
    after = keyspace(redis, prefix)
    assert sorted(after) == sorted(before), "the request created or deleted keys"
    for name, (dump, pttl) in after.items():
        old_dump, old_pttl = before[name]
        assert dump == old_dump, f"the request changed {name!r}"
        if old_pttl < 0:
            assert pttl == old_pttl, f"the request set a TTL on {name!r}"
        else:
            assert 0 <= pttl <= old_pttl, f"the request refreshed the TTL of {name!r}"


# Keys that may outlive a complete flush: token memory (docs/sessions.md).
_TOKEN_MEMORY = r"\{\d+\}:t:-?\d+"


def leftover_keys(redis: Redis, config: Config) -> list[str]:
    """Keys under the test's prefix other than token memory and the recorded settings."""
    token_memory = re.compile(re.escape(config.key_prefix) + ":" + _TOKEN_MEMORY)
    settings = Keys(config.key_prefix).deployment()
    names = (k.decode() for k in redis.scan_iter(match=f"{config.key_prefix}:*", count=1000))
    # SCAN may repeat a key: a set.
    return sorted({n for n in names if not token_memory.fullmatch(n) and n != settings})


def assert_drained(redis: Redis, config: Config, *, allow: tuple[str, ...] = ()) -> None:
    """Nothing buffered is left: no snapshot, no live counter, no window; no lock,
    no flush figures unless ``allow``ed (``"lock"``, ``"figures"``)."""
    keys = Keys(config.key_prefix)
    kept = {"lock": keys.flush_lock(), "figures": keys.flush_stats()}
    assert snapshots.pending_snapshots(redis, config) == []
    assert snapshots.buffered_windows(redis, config) == set()
    assert [k for k in leftover_keys(redis, config) if k not in {kept[a] for a in allow}] == []

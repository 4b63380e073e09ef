"""Ingest writes on Redis Cluster: one INGEST call per shard.

On one Redis, ``ingest.record_entries`` makes one call for all the entries,
atomic as a whole. On a cluster each shard is one slot, perhaps on another
node, and a script may only touch keys of one slot: the payloads of the
entries are split by shard, each shard's payloads (all their windows) make
one INGEST call -- built by the same ``ingest._call`` as on one Redis -- and
the calls go out as one non-transactional pipeline (one round trip per node,
all nodes at once). Each call is atomic; the calls are independent.

What each entry (request) gets:

- every shard call carrying its payloads succeeded: its :class:`Recorded`;
- none succeeded: the error of its first failed call (a ``RedisError``);
- some succeeded: :class:`PartlyWritten`, naming the payloads written
  (docs/payload.md, "Batches"; a single payload is never partly written).

With ``STATS_REDIS_WAIT_REPLICAS=N`` every node's calls are followed, on the
same connection, by ``WAIT N timeout``: a call whose writes are not on N
replicas within the timeout fails with :class:`NotReplicated` (its payloads
are in the master and may be lost with it; a resent payload is recognised
as a retry if they were kept, counted if they were lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError, RedisError

from ..config import Config
from . import keys as k_
from .ingest import Entry, Recorded, _call
from .scripts import Scripts


class PartlyWritten(RedisError):
    """Some of a request's shard calls were written, others failed.

    ``written`` are the indexes (in the request) of the payloads written,
    ``recorded`` what they did, ``cause`` the first failure.
    """

    def __init__(self, cause: RedisError, written: list[int], recorded: Recorded) -> None:
        super().__init__(f"{len(written)} payload(s) written, the others failed: {cause}")
        self.cause = cause
        self.written = written
        self.recorded = recorded


class NotReplicated(RedisError):
    """A call's writes did not reach the replicas asked for in time."""


@dataclass(frozen=True)
class _ShardCall:
    shard: int
    keys: list[Any]
    args: list[Any]
    spans: list[tuple[int, int]]  # per entry index in ``members``: [start, end) of outcomes
    members: list[int]  # the entries with payloads in this shard


def record_entries_per_shard(
    redis: Redis, scripts: Scripts, config: Config, entries: Sequence[Entry]
) -> list[Recorded | RedisError]:
    """Add the entries' payloads with one INGEST call per shard; what each entry did.

    Never raises for a failed call: the failure is the entry's result.
    """
    shard_of = [[k_.shard_of(p["token"], config.shards) for p in e.payloads] for e in entries]
    calls = _shard_calls(config, entries, shard_of)
    outcomes = _send_all(redis, scripts, config, calls)
    # Each entry's slice of each of its shard calls' outcome strings.
    parts: list[dict[int, bytes | RedisError]] = [{} for _ in entries]
    for call, result in zip(calls, outcomes, strict=True):
        for member, (start, end) in zip(call.members, call.spans, strict=True):
            failed = isinstance(result, Exception)
            parts[member][call.shard] = result if failed else result[start:end]
    return [_entry_result(shards, part) for shards, part in zip(shard_of, parts, strict=True)]


def _shard_calls(
    config: Config, entries: Sequence[Entry], shard_of: list[list[int]]
) -> list[_ShardCall]:
    calls = []
    for shard in sorted({s for shards in shard_of for s in shards}):
        members = [i for i, shards in enumerate(shard_of) if shard in shards]
        sub = [
            Entry(
                [p for p, s in zip(entries[i].payloads, shard_of[i], strict=True) if s == shard],
                entries[i].now,
            )
            for i in members
        ]
        keys, args, spans = _call(config, sub)
        calls.append(_ShardCall(shard, keys, args, spans, members))
    return calls


def _entry_result(shards: list[int], part: dict[int, bytes | RedisError]) -> Recorded | RedisError:
    """One entry's result from its shards' outcome slices (or errors)."""
    taken = dict.fromkeys(part, 0)
    each: list[bytes | None] = []  # per payload: its outcome, None if its call failed
    for s in shards:
        result = part[s]
        each.append(None if isinstance(result, Exception) else result[taken[s] : taken[s] + 1])
        taken[s] += 1
    failed = [r for r in part.values() if isinstance(r, Exception)]
    written = [i for i, outcome in enumerate(each) if outcome is not None]
    recorded = Recorded.from_outcomes(b"".join(each[i] for i in written))  # type: ignore[misc]
    if not failed:
        return recorded
    if not written:
        return failed[0]
    return PartlyWritten(failed[0], written, recorded)


def _send_all(
    redis: Redis, scripts: Scripts, config: Config, calls: list[_ShardCall]
) -> list[bytes | RedisError]:
    """Every call's outcome string, or its error."""
    try:
        results = _send(redis, scripts, config, calls)
    except RedisError:
        # Nothing was sent: a node could not be reached (or the slot map
        # named none). Each call on its own, so that only the shards of that
        # node fail.
        results = [_send_alone(redis, scripts, config, call) for call in calls]
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        # A node that has not seen the script yet (a new or promoted master):
        # load it everywhere, send those calls again (they did not run).
        try:
            redis.script_load(scripts.ingest.script)
        except RedisError:
            pass
        for i in missing:
            results[i] = _send_alone(redis, scripts, config, calls[i])
    return results


def _send_alone(
    redis: Redis, scripts: Scripts, config: Config, call: _ShardCall
) -> bytes | RedisError:
    try:
        return _send(redis, scripts, config, [call])[0]
    except RedisError as exc:
        return exc


def _send(
    redis: Redis, scripts: Scripts, config: Config, calls: list[_ShardCall]
) -> list[bytes | RedisError]:
    """One pipeline: the calls (and a WAIT per node). Raises RedisError only when
    nothing was sent."""
    sha = scripts.ingest.sha
    pipe = redis.pipeline(transaction=False)
    nodes: dict[str, Any] = {}  # the masters of the calls' slots, by name
    node_of: list[str] = []
    for call in calls:
        # The master from the client's slot map, given to the pipeline: left to
        # find it itself, it would ask a node (COMMAND GETKEYS) for every EVALSHA.
        # A call sent again after MOVED, ASK or a connection error is routed anew.
        node = redis.get_node_from_key(call.keys[0])
        nodes.setdefault(node.name, node)
        node_of.append(node.name)
        pipe.execute_command(
            "EVALSHA", sha, len(call.keys), *call.keys, *call.args, target_nodes=node
        )
    replicas = config.redis_wait_replicas
    if replicas:
        timeout_ms = max(1, int(config.redis_timeout_seconds * 500))
        for node in nodes.values():
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
    results = pipe.execute(raise_on_error=False)
    outcomes: list[bytes | RedisError] = results[: len(calls)]
    if replicas:
        acks = dict(zip(nodes, results[len(calls) :], strict=True))
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception):
                continue
            ack = acks[node_of[i]]
            # A call sent again on its own ran on another connection than its
            # node's WAIT: nothing confirms it.
            if pipe.redirected or isinstance(ack, Exception) or ack < replicas:
                outcomes[i] = NotReplicated(
                    f"written, but not acknowledged by {replicas} replica(s) in time"
                )
    return outcomes

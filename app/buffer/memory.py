"""What Redis says about its memory: the eviction policy and the used/max ratio.

Redis holds the only copy of every accepted payload until it is flushed, so
it must never evict a key (docs/deployment.md, "Redis memory"): every process
refuses to start on a policy other than ``noeviction``, and /readyz fails if
it changes later. The ratio of used to maximum memory is reported before the
buffer fills.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.exceptions import OutOfMemoryError, ResponseError

from .connection import is_cluster, primaries_info

SAFE_POLICY = "noeviction"


class EvictionPolicyError(RuntimeError):
    """Redis may evict buffered keys; the message names the policy."""

    def __init__(self, policy: str) -> None:
        super().__init__(
            f"Redis maxmemory-policy is {policy!r}: it may evict buffered payloads; "
            f"set it to {SAFE_POLICY} (redis-cli CONFIG SET maxmemory-policy {SAFE_POLICY})"
        )
        self.policy = policy


@dataclass(frozen=True)
class MemoryState:
    used_bytes: int
    max_bytes: int  # 0: no limit
    policy: str

    @property
    def used_ratio(self) -> float | None:
        """used / max, or None when Redis has no memory limit."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None


def memory_state(redis: Redis) -> MemoryState:
    """One INFO MEMORY call (works where CONFIG is disabled). Raises RedisError.

    On Redis Cluster, one per master: the state of the fullest master (the
    first to refuse writes), and a policy other than noeviction if any master
    has one.
    """
    if is_cluster(redis):
        states = [_state(info) for info in primaries_info(redis, "memory")]
        unsafe = [s.policy for s in states if s.policy != SAFE_POLICY]
        fullest = max(states, key=lambda s: (s.used_ratio or 0.0, s.used_bytes))
        return MemoryState(fullest.used_bytes, fullest.max_bytes, (unsafe or [SAFE_POLICY])[0])
    return _state(redis.info("memory"))


def _state(info: dict) -> MemoryState:
    return MemoryState(
        used_bytes=int(info.get("used_memory", 0)),
        max_bytes=int(info.get("maxmemory", 0)),
        policy=str(info.get("maxmemory_policy", SAFE_POLICY)),
    )


def check_eviction_policy(redis: Redis) -> MemoryState:
    """Raise EvictionPolicyError unless Redis keeps every key; RedisError if down."""
    state = memory_state(redis)
    if state.policy != SAFE_POLICY:
        raise EvictionPolicyError(state.policy)
    return state


def is_out_of_memory(exc: Exception) -> bool:
    """Whether Redis refused a write because maxmemory is reached."""
    # redis-py raises OutOfMemoryError with the "OOM" prefix taken off; a
    # command in a pipeline comes back as a ResponseError naming it.
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "used memory > 'maxmemory'" in str(exc)
    )

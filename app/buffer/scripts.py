"""The Lua scripts of the buffer, one ``lua/<name>.lua`` file each.

Each file opens with its contract (KEYS, ARGV, return) and asserts its key
count. Every key a script touches is passed in KEYS, all under one hash tag,
so each call runs on one Redis Cluster node. ``Scripts(redis)`` registers
them on one client: EVALSHA, falling back to EVAL once when Redis answers
NOSCRIPT (after a restart or SCRIPT FLUSH).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis import Redis
from redis.commands.core import Script

NAMES = ("ingest", "freeze", "collect")


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


class Scripts:
    """The buffer's scripts, registered on ``redis``."""

    def __init__(self, redis: Redis) -> None:
        self.ingest: Script = redis.register_script(source("ingest"))
        self.freeze: Script = redis.register_script(source("freeze"))
        self.collect: Script = redis.register_script(source("collect"))

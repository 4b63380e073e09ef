"""The client's command packer writes what redis-py's own would, byte for byte."""

from __future__ import annotations

import pytest
from redis.connection import HiredisRespSerializer
from redis.exceptions import DataError

from payload_stats.buffer.connection import CommandPacker


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "f" * 40, 2, "ps:{3}:windows", b"ps:{3}:w:1:c:1:a:b", 0, 10**12, b"\xff"),
        ("SCRIPT LOAD", "return 1"),  # a two-word command name
        ("SET", "k", bytearray(b"ab")),  # hiredis refuses a bytearray
        ("SET", "k", memoryview(b"ab")),
        ("INCRBYFLOAT", "k", 1.5),
    ],
    ids=["evalsha", "two-words", "bytearray", "memoryview", "float"],
)
def test_packs_like_redis_py(command):
    assert CommandPacker().pack(*command) == HiredisRespSerializer().pack(*command)


def test_an_argument_redis_cannot_take_is_redis_pys_error():
    with pytest.raises(DataError):
        CommandPacker().pack("SET", "k", None)

"""Every Redis key name the service uses, and nowhere else.

All keys of one shard share the hash tag ``{s}`` (Redis Cluster puts them in
one slot), so a script call may touch any of them. A payload's shard is a
stable hash of its session token, so a token's memory lives beside it.

Layout, with ``P`` the key prefix, ``s`` the shard, ``k`` the window index::

    P:{s}:windows                zset  windows with live data in the shard (score k)
    P:{s}:w:k:idx                list  idents of the window's live counter hashes
    P:{s}:w:k:c:IDENT            hash  live counters (fields: buffer/counters.py)
    P:{s}:t:k                    hash  session memory: session key -> "1" seen, "2" session
                                       started (then the retry record, see lua/ingest.lua)
    P:{s}:snaps                  hash  pending snapshots: "FLUSHID:k" -> k
    P:{s}:x:FLUSHID:k:list       list  idents of a frozen snapshot
    P:{s}:x:FLUSHID:k:c:IDENT    hash  frozen counters
    P:lock:flush                       the flusher's lock
    P:flush:stats                hash  flush counters for /metrics
    P:deployment                 hash  the recorded window_seconds and shards (app/deployment.py)

``IDENT`` encodes a (customer, content) pair as ``<n>:<customer>:<content>``
where ``n`` is the UTF-8 byte length of the customer: the length prefix keeps
every pair apart, whatever characters the names hold.
"""

from __future__ import annotations

import hashlib
import zlib


def shard_of(token: str, shards: int) -> int:
    """The shard of a session token: stable across processes and hosts."""
    return zlib.crc32(token.encode("utf-8")) % shards


def session_key(ident: bytes, token: str) -> bytes:
    """A session as session memory holds it: a 96-bit BLAKE2b digest of its
    (customer, content, token), so that a device can only ever touch its own
    session (docs/retries.md, "Isolation between devices").

    12 bytes instead of up to 640 characters per remembered session; two of
    the sessions alive in one shard colliding is a 1-in-10^17 event. The
    newline cannot occur in a customer or content name (docs/payload.md).
    """
    return hashlib.blake2b(ident + b"\n" + token.encode("utf-8"), digest_size=12).digest()


def encode_ident(customer: str, content: str) -> bytes:
    c = customer.encode("utf-8")
    return b"%d:%s:%s" % (len(c), c, content.encode("utf-8"))


def decode_ident(ident: bytes) -> tuple[str, str]:
    """The (customer, content) pair of an ident. Raises ValueError if malformed."""
    head, sep, rest = ident.partition(b":")
    if not sep or not head.isdigit():
        raise ValueError(f"malformed ident {ident!r}")
    n = int(head)
    if len(rest) < n + 1 or rest[n : n + 1] != b":":
        raise ValueError(f"malformed ident {ident!r}")
    return rest[:n].decode("utf-8"), rest[n + 1 :].decode("utf-8")


class Keys:
    """Key names for one key prefix; methods take the shard (and window)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _tag(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}"

    def windows(self, shard: int) -> str:
        return f"{self._tag(shard)}:windows"

    def index(self, shard: int, k: int) -> str:
        return f"{self._tag(shard)}:w:{k}:idx"

    def counters(self, shard: int, k: int, ident: bytes) -> bytes:
        return f"{self._tag(shard)}:w:{k}:c:".encode() + ident

    def tokens(self, shard: int, k: int) -> str:
        return f"{self._tag(shard)}:t:{k}"

    def snapshots(self, shard: int) -> str:
        return f"{self._tag(shard)}:snaps"

    def snapshot_list(self, shard: int, flush_id: str, k: int) -> str:
        return f"{self._tag(shard)}:x:{flush_id}:{k}:list"

    def snapshot_counters(self, shard: int, flush_id: str, k: int, ident: bytes) -> bytes:
        return f"{self._tag(shard)}:x:{flush_id}:{k}:c:".encode() + ident

    def flush_lock(self) -> str:
        return f"{self.prefix}:lock:flush"

    def flush_stats(self) -> str:
        return f"{self.prefix}:flush:stats"

    def deployment(self) -> str:
        return f"{self.prefix}:deployment"

"""The listen address of ``payload-stats serve``: checked before anything starts,
announced once it answers.

``check_address`` tries the address the way gunicorn will (a TCP socket with
SO_REUSEADDR, bound, then closed), so a port in use, a host that does not
resolve or an address of another machine is one line before any embedded
server starts. ``Announcer`` polls ``GET /healthz`` on it and prints the
"serving on" line once, when the service answers.
"""

from __future__ import annotations

import errno
import http.client
import socket
import time
import urllib.parse
from collections.abc import Callable

from marshmallow import ValidationError

from ..config import check_bind


class AddressError(ValueError):
    """The listen address cannot be used; the message is one line for the operator."""


def split(bind: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT; an IPv6 host may be in brackets. Raises AddressError."""
    try:
        check_bind(bind)
    except ValidationError:
        raise AddressError(
            f"{bind!r} is not an address to listen on: use HOST:PORT, e.g. 127.0.0.1:8000"
        ) from None
    host, _, port = bind.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def check_address(bind: str, hint: str = "use --bind or STATS_BIND") -> None:
    """Raise AddressError (one line, ending with ``hint``) unless ``bind`` can be listened on."""
    host, port = split(bind)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise AddressError(f"cannot resolve the host {host!r} of {bind}; {hint}") from None
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressError(f"port {port} is in use; {hint}") from None
            if exc.errno == errno.EACCES:
                raise AddressError(
                    f"no permission to listen on port {port} (ports below 1024 need root); {hint}"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise AddressError(f"{host} is not an address of this machine; {hint}") from None
            raise AddressError(f"cannot listen on {bind}: {exc.strerror}; {hint}") from None


def probe_url(bind: str) -> str:
    """The URL of ``GET /healthz`` on ``bind`` from this machine (a wildcard host
    is reached on the loopback address)."""
    host, port = split(bind)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether ``GET url`` answers 200 (directly: no proxy from the environment)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Announcer:
    """A ``processes.supervise`` tick: calls ``announce`` once ``GET /healthz`` answers.

    Polls at most every ``interval`` seconds; past ``patience`` seconds without an
    answer it calls ``late`` once (and keeps polling).
    """

    def __init__(
        self,
        bind: str,
        announce: Callable[[], None],
        late: Callable[[float], None] | None = None,
        *,
        interval: float = 0.25,
        patience: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = probe_url(bind)
        self.announce = announce
        self.late = late
        self.interval = interval
        self.patience = patience
        self.clock = clock
        self.started = clock()
        self.next_probe = self.started
        self.done = False
        self.warned = False

    def __call__(self) -> None:
        if self.done or self.clock() < self.next_probe:
            return
        if answers(self.url):
            self.done = True
            self.announce()
            return
        self.next_probe = self.clock() + self.interval
        waited = self.clock() - self.started
        if waited > self.patience and not self.warned and self.late is not None:
            self.warned = True
            self.late(waited)

"""gunicorn's gthread worker with a deadline on the request head.

A gthread worker gives a thread to every connection that has sent its first
byte, until the request is read: a client sending one header line a second
holds a thread for as long as it likes, and ``threads`` such clients take
the whole worker. gunicorn has no setting for it. This worker gives each
request head ``header_timeout`` seconds, from the moment a thread takes the
connection until gunicorn has parsed the head (its ``pre_request`` hook):
past that, the connection is shut down and the thread is free again.

It also shortens the time a thread waits for the first byte of a new
connection before handing it back to the poller (gunicorn >= 27 waits 5 s),
so connections that never send a byte do not hold threads either.

What it does not bound: a request body trickled slowly once the head is in,
and the number of connections (``worker_connections``). The buffering proxy
in front (deploy/nginx.conf) bounds both; see the README, "Slow clients".
"""

from __future__ import annotations

import socket
import threading
import time

from gunicorn.workers import gthread

#: Seconds a new connection may hold a thread before its first byte arrives.
FIRST_BYTE_WAIT_SECONDS = 0.05


class BoundedThreadWorker(gthread.ThreadWorker):
    """``worker_class = "payload_stats.web.worker.BoundedThreadWorker"``."""

    #: Set by payload_stats.web.gunicorn_conf (STATS_WEB_HEADER_TIMEOUT_SECONDS).
    header_timeout: float = 5.0

    def init_process(self) -> None:
        # Runs in the worker, after the fork; the parent's init_process never returns.
        self._reading: dict[int, tuple[gthread.TConn, float]] = {}
        self._reading_lock = threading.Lock()
        if hasattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT"):
            gthread.DEFAULT_WORKER_DATA_TIMEOUT = FIRST_BYTE_WAIT_SECONDS
        reaper = threading.Thread(target=self._enforce_deadlines, name="header-deadline")
        reaper.daemon = True
        reaper.start()
        super().init_process()

    def handle(self, conn):
        ident = threading.get_ident()
        with self._reading_lock:
            self._reading[ident] = (conn, time.monotonic() + self.header_timeout)
        try:
            return super().handle(conn)
        finally:
            with self._reading_lock:
                self._reading.pop(ident, None)

    def head_read(self) -> None:
        """The request head of this thread's connection is in: no deadline now."""
        with self._reading_lock:
            self._reading.pop(threading.get_ident(), None)

    def _enforce_deadlines(self) -> None:
        while True:
            time.sleep(min(0.25, self.header_timeout / 4))
            now = time.monotonic()
            with self._reading_lock:
                late = [conn for conn, deadline in self._reading.values() if deadline < now]
            for conn in late:
                # The reading thread sees the end of the stream and closes the connection.
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

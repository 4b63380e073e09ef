"""Peer ``naive-pg``: one PostgreSQL transaction per payload, no buffer.

Each payload is an ``INSERT ... ON CONFLICT DO UPDATE`` adding its bytes to
the row of its window, customer and content, committed at once. The pool is
created lazily in each worker process, after gunicorn forks.

Environment: ``DATABASE_URL`` (its search_path picks the schema),
``STATS_WINDOW_SECONDS``. ``init_db`` creates the table beforehand.
"""

from __future__ import annotations

import os
import threading
import time

import psycopg2
from flask import Flask, request
from psycopg2.pool import ThreadedConnectionPool

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS naive_stats (
    time      timestamptz NOT NULL,
    customer  text        NOT NULL,
    content   text        NOT NULL,
    cdn       bigint      NOT NULL,
    p2p       bigint      NOT NULL,
    payloads  bigint      NOT NULL,
    PRIMARY KEY (time, customer, content)
)
"""

UPSERT = """
INSERT INTO naive_stats AS s (time, customer, content, cdn, p2p, payloads)
VALUES (to_timestamp(%s), %s, %s, %s, %s, 1)
ON CONFLICT (time, customer, content) DO UPDATE SET
    cdn = s.cdn + EXCLUDED.cdn,
    p2p = s.p2p + EXCLUDED.p2p,
    payloads = s.payloads + 1
"""


def init_db(database_url: str) -> None:
    """Create the peer's table (once, before the workers start)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(CREATE_TABLE)
    finally:
        conn.close()


class _Pool:
    """A connection pool per process, made on first use (after fork)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.pid = 0
        self.pool: ThreadedConnectionPool | None = None
        self.lock = threading.Lock()

    def get(self) -> ThreadedConnectionPool:
        with self.lock:
            if self.pool is None or self.pid != os.getpid():
                self.pool = ThreadedConnectionPool(1, 16, self.database_url)
                self.pid = os.getpid()
            return self.pool


def create_app() -> Flask:
    """A Flask app whose ``POST /stats`` commits one upsert per payload."""
    app = Flask(__name__)
    pools = _Pool(os.environ["DATABASE_URL"])
    window_seconds = int(os.environ.get("STATS_WINDOW_SECONDS", "300"))

    @app.post("/stats")
    def post_stats():
        p = request.get_json()
        end = (int(time.time() // window_seconds) + 1) * window_seconds
        pool = pools.get()
        conn = pool.getconn()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(UPSERT, (end, p["customer"], p["content"], p["cdn"], p["p2p"]))
        finally:
            pool.putconn(conn, close=bool(conn.closed))
        return "", 204

    return app

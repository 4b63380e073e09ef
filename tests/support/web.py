"""An application served over HTTP from a thread (werkzeug), for clients that need
a real socket: the browser tests, ``payload-stats demo``, the README's curl lines.

The application keeps the test's injected clock, so what a page or a client
sees is as deterministic as the test client's answers.
"""

from __future__ import annotations

import threading

from werkzeug.serving import make_server


class ServedApp:
    """``app`` on 127.0.0.1 (a free port) until ``close()``; a context manager."""

    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> ServedApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

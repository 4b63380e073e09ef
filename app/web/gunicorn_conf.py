"""Gunicorn settings for ``payload-stats web``.

Precedence (gunicorn's): this file < GUNICORN_CMD_ARGS < command-line flags.
"""

import logging
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports prometheus_client: every worker writes its counts
# under this directory and /metrics, in any worker, sums them all.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="payload-stats-metrics-")

from payload_stats.config import Config  # noqa: E402
from payload_stats.logs import JSONFormatter, TextFormatter  # noqa: E402
from payload_stats.web.worker import BoundedThreadWorker  # noqa: E402

_config = Config.from_env()

bind = _config.bind
# Threads, not processes: a request mostly waits on its Redis round trip.
# Measured with the benchmark harness (BENCHMARKS.md): one worker per core
# with 8 threads serves about 1.5 times what 2 x cores + 1 sync workers do,
# and 16 make a worker's INGEST calls carry more requests each (group
# commit), for less Redis and worker CPU per request than 8.
# gthread, plus a deadline on the request head (payload_stats.web.worker).
worker_class = "payload_stats.web.worker.BoundedThreadWorker"
BoundedThreadWorker.header_timeout = _config.web_header_timeout_seconds
workers = _config.web_workers or multiprocessing.cpu_count()
threads = _config.web_threads
timeout = 30
graceful_timeout = 10
# Seconds an idle keep-alive connection, or a new one that has not sent a byte,
# is kept (on the poller, without a thread) before it is closed.
keepalive = 5
# Connections per worker, busy or idle; past it the worker stops accepting and
# new connections wait in the listen backlog.
worker_connections = 1000
# Request size bounds: a URL may carry a cursor (up to 4096 characters) and
# filters; devices send a handful of headers.
limit_request_line = 8190
limit_request_fields = 32
limit_request_field_size = 8190
# Gunicorn >= 24 opens a control socket at one fixed path per user; several
# services (or tests) on one host would fight over it. Older versions ignore this.
control_socket_disable = True
# No access log: it would be one line per device payload.
accesslog = None


def on_starting(server):
    # Gunicorn's own lines in the app's format (set here rather than with
    # logconfig_dict, which would make gunicorn build every access-log line).
    formatter = JSONFormatter() if _config.log_format == "json" else TextFormatter()
    for handler in logging.getLogger("gunicorn.error").handlers:
        handler.setFormatter(formatter)
    # Counts left by an earlier run would be added to this one's.
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def pre_request(worker, req):
    # The request head is parsed: its deadline no longer applies.
    head_read = getattr(worker, "head_read", None)
    if head_read is not None:
        head_read()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

"""Gunicorn settings for ``payload-stats web``.

Precedence (gunicorn's): this file < GUNICORN_CMD_ARGS < command-line flags.
"""

import multiprocessing
import os
import tempfile
from pathlib import Path

# Before anything imports prometheus_client: it picks its multiprocess mode
# once, at import. Every worker then writes its counts under this directory
# and /metrics, in any worker, sums them all.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="payload-stats-metrics-")

from app.config import Config  # noqa: E402

_config = Config.from_env()

bind = _config.bind
workers = _config.web_workers or 2 * multiprocessing.cpu_count() + 1
worker_class = "sync"
timeout = 30
graceful_timeout = 10
# Gunicorn >= 24 opens a control socket at one fixed path per user; several
# services (or tests) on one host would fight over it. Older versions ignore this.
control_socket_disable = True

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "app": {"()": "app.logs.JSONFormatter" if _config.log_format == "json"
                else "app.logs.TextFormatter"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "app",
                   "stream": "ext://sys.stderr"},
    },
    # The app's own handler is put on the root logger by create_app().
    "root": {"level": _config.log_level, "handlers": []},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        # One line per device payload is too many: raise to INFO to see them.
        "gunicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


def on_starting(server):
    # Counts left by an earlier run would be added to this one's.
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

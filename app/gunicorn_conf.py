"""Gunicorn settings for ``payload-stats web``.

Precedence (gunicorn's): this file < GUNICORN_CMD_ARGS < command-line flags.
"""

import multiprocessing

from app.config import Config

_config = Config.from_env()

bind = _config.bind
workers = _config.web_workers or 2 * multiprocessing.cpu_count() + 1
worker_class = "sync"
timeout = 30
graceful_timeout = 10
# Access logs would print one line per device payload: off unless asked for.
accesslog = None
# Gunicorn >= 24 opens a control socket at one fixed path per user; several
# services (or tests) on one host would fight over it. Older versions ignore this.
control_socket_disable = True

"""``python -m payload_stats``: the ``payload-stats`` command."""

from .ops.cli import main

main()

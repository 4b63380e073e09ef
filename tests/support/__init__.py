"""What the tests, ``scripts/soak.py`` and the benchmarks share.

- ``model``: the one reference model of the rules (pure Python, no I/O).
- ``servers``: free ports, a private ``redis-server``, the CLI as a
  subprocess, waiting for ports, stopping process groups.
- ``store``: what Redis and PostgreSQL hold, read for assertions.
- ``http``: checks of HTTP answers (the JSON error body).

The package ``payload_stats`` never imports from here.
"""

"""What the tests, ``scripts/soak.py`` and the benchmarks share.

- ``model``: the one reference model of the rules (pure Python, no I/O).
- ``servers``: free ports, a private ``redis-server``, the CLI as a
  subprocess, waiting for ports, stopping process groups.
- ``store``: what Redis and PostgreSQL hold, read for assertions.
- ``drive``: ingest in process with the model checking every answer
  (``Feeder``), and failpoints that crash a flush.
- ``http``: checks of HTTP answers (the JSON error body).

Test modules import from here, never from each other. The package
``payload_stats`` never imports from here.
"""

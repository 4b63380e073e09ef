"""What the tests, ``scripts/soak.py`` and the benchmarks share.

- ``model``: the one reference model of the rules (pure Python, no I/O).
- ``servers``: free ports, a private ``redis-server``, the CLI as a
  subprocess, waiting for ports, stopping process groups.

The package ``payload_stats`` never imports from here.
"""

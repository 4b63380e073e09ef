"""What the tests, ``scripts/soak.py`` and the benchmarks share.

- ``model``: the one reference model of the rules (pure Python, no I/O).

The package ``payload_stats`` never imports from here.
"""

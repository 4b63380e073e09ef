"""The benchmark harness of payload-stats.

Run ``python -m benchmarks`` from the repository root (see BENCHMARKS.md).
Every figure is a ratio against a peer measured in the same run, on the
same gunicorn settings; absolute numbers are printed beside them only as
context.

Modules: ``payloads`` (realistic random payloads), ``servers`` (gunicorn
subprocesses), ``load``, ``load_wrk`` and ``load_python`` (load
generators), ``fill``, ``flushbench`` and ``memory`` (flush speed, Redis
memory), ``sandbox`` (a private key prefix and PostgreSQL schema),
``runner`` (the phases), ``report`` (ratios, targets, tables),
``profiling`` (py-spy) and ``peers/`` (the apps the project is measured
against).
"""

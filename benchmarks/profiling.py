"""Profiling a server under load with py-spy, and reading its samples.

``record_during`` samples the gunicorn master and its workers
(``py-spy record --subprocesses``, on-CPU samples only: on a machine where
the load generator, Redis and PostgreSQL share two cores, throughput is CPU
per request) while a load phase runs. It writes the collapsed stacks
(``NAME.txt``: input for flamegraph.pl or speedscope) and a summary
(``NAME-summary.txt``) that splits the request path into stages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .servers import Server

# A sample belongs to the stage of its innermost frame that names one.
STAGES = (
    ("redis: reading the reply", ("(redis/_parsers",)),
    ("redis: sending the command", ("send_packed_command (redis", "sendall (")),
    ("redis: client (pack, pool, retry)", ("(redis/",)),
    ("JSON (decode body, encode reply)", ("parse_json (", "get_json (", "(json/", "orjson")),
    ("validation (ingest/schema, marshmallow)", ("ingest/schema.py", "(marshmallow/")),
    ("group commit (threads meeting)", ("ingest/group_commit.py", "(threading.py")),
    ("buffer/ingest: keys and args", ("buffer/ingest.py", "buffer/keys.py", "/windows.py")),
    ("metrics (prometheus_client)", ("(prometheus_client/", "web/metrics.py")),
    ("logging (incl. gunicorn access log)", ("(logging/", "(gunicorn/glogging")),
    ("Flask/werkzeug", ("(flask/", "(werkzeug/")),
    ("gunicorn: HTTP parse, write, close", ("(gunicorn/",)),
    ("app: other", ("/app/",)),
)


def py_spy() -> str | None:
    """The py-spy executable (pip install py-spy), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record_during(
    server: Server, load: Callable[[], dict[str, Any]], out_dir: str, name: str, seconds: float
) -> dict[str, Any]:
    """Run ``load()`` while py-spy samples ``server``; the load result plus a summary."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{name}.txt"
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(server.pid),
            "--subprocesses",
            "--rate",
            "200",
            "--duration",
            str(max(1, round(seconds))),
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    result = load()
    _, err = spy.communicate(timeout=seconds + 60)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    summary = summarize(raw.read_text())
    (out / f"{name}-summary.txt").write_text(format_summary(summary))
    return {"load": result, "collapsed": str(raw), "summary": summary}


def stage(frames: list[str]) -> str:
    """The stage of one sample (frames outermost first)."""
    for frame in reversed(frames):
        for name, needles in STAGES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarize(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Request samples by stage, and the top self and inclusive frames (% of samples)."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if not any(f.startswith("SyncWorker.handle (") or ".handle (gunicorn" in f for f in frames):
            continue  # the master, or a worker between requests
        n = int(count)
        stages[stage(frames)] += n
        leaves[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        total += n

    def share(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in counter.most_common(k)]

    return {
        "samples": total,
        "stages": dict(share(stages, len(stages))) if total else {},
        "self": share(leaves, top) if total else [],
        "inclusive": share(inclusive, 2 * top) if total else [],
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"on-CPU samples inside a request: {summary['samples']}",
        "",
        "stages (% of request CPU):",
    ]
    lines += [f"  {pct:5.1f}  {name}" for name, pct in summary["stages"].items()]
    lines += ["", "self time (% of request CPU):"]
    lines += [f"  {pct:5.1f}  {frame}" for frame, pct in summary["self"]]
    lines += ["", "inclusive time (% of request CPU):"]
    lines += [f"  {pct:5.1f}  {frame}" for frame, pct in summary["inclusive"]]
    return "\n".join(lines) + "\n"

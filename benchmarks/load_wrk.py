"""Load with wrk and ``benchmarks/wrk/post.lua``.

The Lua script draws realistic payloads, counts non-2xx answers in
``response()`` and prints one JSON line from ``done()`` (prefixed ``WRK_JSON``)
that this module parses. A paced phase (``LoadSpec.rate``) uses ``delay()``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

from .load import LoadResult, LoadSpec

SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"
MARKER = "WRK_JSON "


def available() -> bool:
    return shutil.which("wrk") is not None


def command(spec: LoadSpec) -> list[str]:
    threads = max(1, min(spec.threads, spec.connections))
    rate = spec.rate / threads if spec.rate else 0  # the script paces each thread
    return [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(spec.connections),
        "-d",
        f"{max(1, math.ceil(spec.duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        spec.url,
        "--",
        str(spec.batch),
        f"{rate:.3f}",
        "close" if spec.close else "keep-alive",
    ]


def run(spec: LoadSpec) -> LoadResult:
    """Run wrk once. Raises RuntimeError if wrk fails or prints no result."""
    proc = subprocess.run(command(spec), capture_output=True, text=True, timeout=spec.duration + 60)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            break
    else:
        raise RuntimeError(
            f"wrk gave no result (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    errors = data["errors"]
    return LoadResult(
        loader="wrk",
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        non2xx=data["non2xx"],
        errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        batch=spec.batch,
    )

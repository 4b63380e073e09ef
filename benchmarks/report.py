"""Turning a run's results into ratios, targets, a text table and Markdown.

Every row is a ratio against a peer measured in the same run; the absolute
figures stand beside it as context, with the targets in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

TARGET_P99_MS = 25.0
TARGET_FLUSH_ROWS_PER_S = 50_000
TARGET_BYTES_PER_KEY = 200
TARGET_BYTES_PER_TOKEN = 100


@dataclass(frozen=True)
class Row:
    figure: str
    ratio: float | None
    peer: str  # what the ratio is against
    context: str  # absolute figures
    target: str = ""
    met: bool | None = None  # None: no target

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _load_rows(load: dict[str, dict]) -> list[Row]:
    rows = []
    project = load.get("project")
    if not project:
        return rows
    p = project["rps"]
    for peer, target, goal in (
        ("direct", "≥ 1.0", 1.0),
        ("naive-pg", "≥ 2.0", 2.0),
        ("bare", "", None),
    ):
        if peer in load:
            ratio = _ratio(p, load[peer]["rps"])
            rows.append(
                Row(
                    "POST /stats req/s",
                    ratio,
                    peer,
                    f"project {p:,.0f} req/s, {peer} {load[peer]['rps']:,.0f} req/s",
                    target,
                    None if goal is None or ratio is None else ratio >= goal,
                )
            )
    if "direct" in load and "bare" in load:
        rows.append(
            Row(
                "direct req/s (context)",
                _ratio(load["direct"]["rps"], load["bare"]["rps"]),
                "bare",
                f"direct {load['direct']['rps']:,.0f}, bare {load['bare']['rps']:,.0f} req/s",
            )
        )
    if "direct" in load and "worker_cpu_us" in project:
        d = load["direct"]
        rows.append(
            Row(
                "gunicorn worker CPU per request",
                _ratio(project["worker_cpu_us"], d["worker_cpu_us"]),
                "direct",
                f"project {project['worker_cpu_us']} us, "
                f"direct {d['worker_cpu_us']} us, bare "
                f"{load.get('bare', {}).get('worker_cpu_us', '?')} us",
            )
        )
        rows.append(
            Row(
                "Redis server CPU per request",
                _ratio(project["redis_cpu_us"], d["redis_cpu_us"]),
                "direct",
                f"project {project['redis_cpu_us']} us, "
                f"direct {d['redis_cpu_us']} us (whole server: other clients count)",
            )
        )
    if "direct" in load:
        d = load["direct"]
        rows.append(
            Row(
                "p99 latency at max rate",
                _ratio(project["p99_ms"], d["p99_ms"]),
                "direct",
                f"project p50 {project['p50_ms']:.1f} / p99 "
                f"{project['p99_ms']:.1f} ms, direct p50 {d['p50_ms']:.1f} / p99 "
                f"{d['p99_ms']:.1f} ms",
            )
        )
    return rows


def _half_rows(half: dict[str, Any]) -> list[Row]:
    if not half or "project" not in half:
        return []
    p99 = half["project"]["p99_ms"]
    direct = half.get("direct")
    return [
        Row(
            "p99 latency at half the max rate",
            _ratio(p99, direct["p99_ms"]) if direct else None,
            "direct at the same rate",
            f"project p99 {p99:.1f} ms at {half['project']['rps']:,.0f} req/s"
            + (
                f", direct p99 {direct['p99_ms']:.1f} ms at {direct['rps']:,.0f} req/s"
                if direct
                else ""
            ),
            f"project p99 ≤ {TARGET_P99_MS:g} ms",
            p99 <= TARGET_P99_MS,
        )
    ]


def _non2xx_row(results: dict[str, Any]) -> list[Row]:
    phases = [r for name, r in results.get("load", {}).items() if name == "project"]
    phases += [
        results[k]["project"] for k in ("batch", "half_load") if results.get(k, {}).get("project")
    ]
    if not phases:
        return []
    bad = sum(r["non2xx"] + r["errors"] for r in phases)
    total = sum(r["requests"] for r in phases)
    return [
        Row(
            "project non-2xx + socket errors",
            _ratio(bad, total) or 0.0,
            "requests sent",
            f"{bad} of {total:,} requests",
            "0",
            bad == 0,
        )
    ]


def _batch_rows(results: dict[str, Any]) -> list[Row]:
    batch = results.get("batch", {}).get("project")
    single = results.get("load", {}).get("project")
    if not batch:
        return []
    rows = [
        Row(
            f"batch of {batch['batch']} payloads/s",
            _ratio(batch["payloads_per_s"], single["rps"] if single else None),
            "project single POST /stats req/s",
            f"{batch['payloads_per_s']:,.0f} payloads/s in {batch['rps']:,.1f} req/s, "
            f"p99 {batch['p99_ms']:.0f} ms",
        )
    ]
    direct = results.get("load", {}).get("direct")
    if direct:
        rows.append(
            Row(
                f"batch of {batch['batch']} payloads/s",
                _ratio(batch["payloads_per_s"], direct["rps"]),
                "direct req/s",
                f"direct {direct['rps']:,.0f} payloads/s, one per request",
            )
        )
    return rows


def _flush_rows(flushes: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for f in flushes:
        big = f["keys"] >= 100_000
        rows.append(
            Row(
                f"flush_once of {f['keys']:,} keys, rows/s",
                _ratio(f["rows_per_s"], f["copy_rows_per_s"]),
                "copy (COPY + upsert, no Redis)",
                f"{f['rows_per_s']:,.0f} rows/s ({f['rows']:,} rows in {f['seconds']:.2f} s, "
                f"peak RSS +{f['peak_rss_growth_mb']} MB), copy {f['copy_rows_per_s']:,.0f} rows/s",
                f"≥ {TARGET_FLUSH_ROWS_PER_S:,} rows/s" if big else "",
                (f["rows_per_s"] >= TARGET_FLUSH_ROWS_PER_S and f["rows"] == f["keys"])
                if big
                else None,
            )
        )
    return rows


def _memory_rows(memory: dict[str, dict]) -> list[Row]:
    if not memory:
        return []
    rows = []
    for name, mine, peer, limit in (
        (
            "Redis bytes per (window, customer, content)",
            "project_per_key",
            "direct_per_key",
            TARGET_BYTES_PER_KEY,
        ),
        (
            "Redis bytes per token, dedup on (default)",
            "project_per_token",
            "direct_per_token",
            TARGET_BYTES_PER_TOKEN,
        ),
        (
            "Redis bytes per token, STATS_DEDUP_SECONDS=0",
            "project_per_token_nodedup",
            "direct_per_token",
            TARGET_BYTES_PER_TOKEN,
        ),
    ):
        m, d = memory[mine], memory[peer]
        # INFO counts the whole server: another client freeing or allocating
        # meanwhile skews it, so a target is met only if both readings meet it.
        worst = max(m["bytes_per_item"], m["memory_usage_per_item"])
        noisy = abs(m["bytes_per_item"] - m["memory_usage_per_item"]) > 0.25 * max(
            1.0, m["memory_usage_per_item"]
        )
        rows.append(
            Row(
                name,
                _ratio(m["bytes_per_item"], d["bytes_per_item"]),
                "direct",
                f"project {m['bytes_per_item']:.0f} B"
                f" (MEMORY USAGE {m['memory_usage_per_item']:.0f}),"
                f" direct {d['bytes_per_item']:.0f} B, over {m['count']:,}"
                + (" -- INFO disturbed by other clients?" if noisy else ""),
                f"≤ {limit} B",
                worst <= limit,
            )
        )
    return rows


def _worker_rows(workers: list[dict[str, Any]]) -> list[Row]:
    if not workers:
        return []
    base = workers[0]
    return [
        Row(
            f"project req/s, {w['setup']}",
            _ratio(w["rps"], base["rps"]),
            f"{base['setup']}",
            f"{w['rps']:,.0f} req/s, p99 {w['p99_ms']:.1f} ms, non-2xx {w['non2xx']}",
        )
        for w in workers
    ]


def _availability_rows(a: dict[str, Any]) -> list[Row]:
    if not a:
        return []

    def probe_context(r: dict[str, Any]) -> str:
        failed = f", {r['failures']} of {r['probes']} failed" if r["failures"] else ""
        return f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms{failed}"

    rows = []
    crowd = f"{a['idle']} idle + {a['slow']} slow connections"
    for name, label in (("direct", "straight to gunicorn"), ("nginx", "through nginx")):
        quiet, attacked = a[f"quiet_{name}"], a[f"attacked_{name}"]
        rows.append(
            Row(
                f"ingest p99, {crowd}, {label}",
                _ratio(attacked["p99_ms"], quiet["p99_ms"]),
                f"quiet, {label}",
                f"{probe_context(attacked)}; quiet {probe_context(quiet)}",
            )
        )
    locked, quiet, free = a["locked_direct"], a["quiet_direct"], a["readers_direct"]
    reads = a["reads_locked"]
    rows.append(
        Row(
            "ingest p99, stats locked, 20 readers",
            _ratio(locked["p99_ms"], quiet["p99_ms"]),
            "quiet, straight to gunicorn",
            f"{probe_context(locked)}; reads meanwhile {reads['statuses']}, "
            f"slowest {reads['slowest_s']} s",
        )
    )
    rows.append(
        Row(
            "ingest p99, stats locked, 20 readers",
            _ratio(locked["p99_ms"], free["p99_ms"]),
            "the same readers, stats free",
            f"readers, stats free: {probe_context(free)}",
        )
    )
    live = a.get("live")
    if live:
        rows.append(
            Row(
                f"GET /stats/live at {live['keys']:,} counters, ms",
                _ratio(live["bounded_ms"], live["unbounded_ms"]),
                "one unbounded read (every counter)",
                f"{live['bounded_ms']:.0f} ms (worst {live['bounded_worst_ms']:.0f}), read "
                f"{live['counters_read']:,} of {live['counters']:,}; unbounded "
                f"{live['unbounded_ms']:.0f} ms",
            )
        )
    return rows


def rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the table, in order."""
    return (
        _load_rows(results.get("load", {}))
        + _half_rows(results.get("half_load", {}))
        + _non2xx_row(results)
        + _batch_rows(results)
        + _flush_rows(results.get("flush", []))
        + _memory_rows(results.get("memory", {}))
        + _worker_rows(results.get("workers", []))
        + _availability_rows(results.get("availability", {}))
    )


def as_dicts(table: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) | {"verdict": r.verdict} for r in table]


def text_table(table: list[Row]) -> str:
    """The table for a terminal: figure, ratio, against, target, verdict, context."""
    head = ("figure", "ratio", "against", "target", "", "context")
    lines = [
        (
            r.figure,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.peer,
            r.target,
            r.verdict,
            r.context,
        )
        for r in table
    ]
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(5)]
    out = []
    for line in [head, *lines]:
        cells = [str(c).ljust(w) for c, w in zip(line[:5], widths, strict=True)]
        cells[1] = str(line[1]).rjust(widths[1])
        out.append("  ".join([*cells, line[5]]).rstrip())
    out.insert(1, "-" * min(160, len(out[0]) + 40))
    return "\n".join(out)


def markdown_table(table: list[Row]) -> str:
    lines = ["| figure | ratio | against | target | | context |", "|---|---:|---|---|---|---|"]
    for r in table:
        ratio = "–" if r.ratio is None else f"{r.ratio:.2f}"
        verdict = {"met": "met", "MISSED": "**missed**", "": ""}[r.verdict]
        lines.append(f"| {r.figure} | {ratio} | {r.peer} | {r.target} | {verdict} | {r.context} |")
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _first_line(["wrk", "--version"]),
    }

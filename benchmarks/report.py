"""Turning a run's results into ratios, targets, a text table and Markdown.

Every row is a ratio against a peer measured in the same run; the absolute
figures stand beside it as context, with the targets in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, replace
from typing import Any

TARGET_BATCH_RATIO = 40.0  # batches of 500, payloads/s against single POST /stats req/s
TARGET_FLUSH_RATIO = 0.8  # flush rows/s against the same write path fed from a list
TARGET_FLUSH_RSS_MB = 50  # peak RSS growth of one flush
TARGET_BYTES_PER_KEY = 200
TARGET_BYTES_PER_TOKEN = 100
TARGET_HISTORY_P99_MS = 50.0


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
        worker = _ratio(project["worker_cpu_us"], d["worker_cpu_us"])
        rows.append(
            Row(
                "gunicorn worker CPU per request",
                worker,
                "direct",
                f"project {project['worker_cpu_us']} us, "
                f"direct {d['worker_cpu_us']} us, bare "
                f"{load.get('bare', {}).get('worker_cpu_us', '?')} us",
                "≤ 1.0",
                None if worker is None else worker <= 1.0,
            )
        )
        redis = _ratio(project["redis_cpu_us"], d["redis_cpu_us"])
        rows.append(
            Row(
                "Redis server CPU per request",
                redis,
                "direct",
                f"project {project['redis_cpu_us']} us, "
                f"direct {d['redis_cpu_us']} us (whole server: other clients count)",
                "≤ 1.2",
                None if redis is None else redis <= 1.2,
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
            "≤ 1.2",
            None if not direct else p99 <= 1.2 * direct["p99_ms"],
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
    ratio = _ratio(batch["payloads_per_s"], single["rps"] if single else None)
    rows = [
        Row(
            f"batch of {batch['batch']} payloads/s",
            ratio,
            "project single POST /stats req/s",
            f"{batch['payloads_per_s']:,.0f} payloads/s in {batch['rps']:,.1f} req/s, "
            f"p99 {batch['p99_ms']:.0f} ms",
            f"≥ {TARGET_BATCH_RATIO:g}",
            None if ratio is None else ratio >= TARGET_BATCH_RATIO,
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
        ratio = _ratio(f["rows_per_s"], f["copy_rows_per_s"])
        rows.append(
            Row(
                f"flush_once of {f['keys']:,} keys, rows/s",
                ratio,
                "copy (the same write path, no Redis)",
                f"{f['rows_per_s']:,.0f} rows/s ({f['rows']:,} rows in {f['seconds']:.2f} s, "
                f"peak RSS +{f['peak_rss_growth_mb']} MB), copy {f['copy_rows_per_s']:,.0f} rows/s",
                f"≥ {TARGET_FLUSH_RATIO:g}, RSS ≤ +{TARGET_FLUSH_RSS_MB} MB" if big else "",
                (
                    ratio is not None
                    and ratio >= TARGET_FLUSH_RATIO
                    and f["peak_rss_growth_mb"] <= TARGET_FLUSH_RSS_MB
                    and f["rows"] == f["keys"]
                )
                if big
                else None,
            )
        )
    return rows


def _history_rows(runs: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for h in runs:
        size = f"{h['fill']['rows'] / 1e6:,.1f} M rows"
        for q in h["queries"].values():
            s, r = q["service"], q["raw"]
            rows.append(
                Row(
                    f"{q['label']}, p99 ({size})",
                    _ratio(s["p99_ms"], r["p99_ms"]),
                    "the same on raw rows",
                    f"p50 {s['p50_ms']} / p99 {s['p99_ms']} ms; raw p50 {r['p50_ms']} / "
                    f"p99 {r['p99_ms']} ms; {q['rows']} rows",
                    f"≤ {TARGET_HISTORY_P99_MS:g} ms",
                    s["p99_ms"] <= TARGET_HISTORY_P99_MS,
                )
            )
        fill = h["fill"]
        rows.append(
            Row(
                f"import rows/s ({size})",
                None,
                "",
                f"{fill['rows_per_s']:,} rows/s ({fill['rows']:,} rows in {fill['seconds']:,.0f} s;"
                f" stats {fill['stats_gb']} GB, rollups {fill['rollups_gb']} GB)",
            )
        )
        ret = h["retention"]
        rows.append(
            Row(
                f"retention: drop a day ({size})",
                None,
                "",
                f"{ret['rows']:,} rows in {ret['seconds']:.2f} s",
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


def _per_payload(phase: dict[str, Any], key: str) -> float:
    """A per-request CPU figure of a load phase, per payload."""
    return phase[key] / (phase.get("batch") or 1)


def _cluster_rows(results: dict[str, Any]) -> list[Row]:
    cluster = results.get("cluster")
    if not cluster or not {"1", "3"} <= set(cluster):
        return []
    one, three = cluster["1"], cluster["3"]
    rows = []
    for kind, label in (
        ("single", "POST /stats"),
        ("batch", f"batch of {three['batch']['batch']}"),
    ):
        rows.append(
            Row(
                f"cluster, 3 masters: {label} payloads/s",
                _ratio(three[kind]["payloads_per_s"], one[kind]["payloads_per_s"]),
                "1 master",
                f"3 masters {three[kind]['payloads_per_s']:,.0f}, 1 master "
                f"{one[kind]['payloads_per_s']:,.0f} payloads/s; web workers "
                f"{_per_payload(three[kind], 'worker_cpu_us'):.0f} vs "
                f"{_per_payload(one[kind], 'worker_cpu_us'):.0f} us per payload "
                "(the web side shares the cores with every master)",
            )
        )
    for kind in ("single", "batch"):
        busiest = max(three[kind]["redis_cpu_us_per_master"]) / (three[kind]["batch"] or 1)
        alone = _per_payload(one[kind], "redis_cpu_us")
        each = ", ".join(
            f"{us / (three[kind]['batch'] or 1):.1f}"
            for us in three[kind]["redis_cpu_us_per_master"]
        )
        rows.append(
            Row(
                f"cluster, 3 masters: Redis CPU per payload on the busiest master ({kind})",
                _ratio(busiest, alone),
                "1 master (all the Redis work)",
                f"per master {each} us, 1 master {alone:.1f} us; all 3 together "
                f"{_per_payload(three[kind], 'redis_cpu_us'):.1f} us; "
                f"{three['shards']} shards placed {three['shards_per_master']}",
            )
        )
    replicated, strict = cluster.get("3+3"), cluster.get("3+3 strict")
    if replicated and strict:
        for kind, label in (
            ("single", "POST /stats"),
            ("batch", f"batch of {three['batch']['batch']}"),
        ):
            s, r = strict[kind], replicated[kind]
            rows.append(
                Row(
                    f"cluster, 3 masters + 3 replicas, strict: {label} payloads/s",
                    _ratio(s["payloads_per_s"], r["payloads_per_s"]),
                    "3 + 3, Redis defaults",
                    f"strict {s['payloads_per_s']:,.0f} (p99 {s['p99_ms']:.0f} ms), defaults "
                    f"{r['payloads_per_s']:,.0f} payloads/s (p99 {r['p99_ms']:.0f} ms); strict: "
                    "appendfsync always, min-replicas-to-write 1, STATS_REDIS_WAIT_REPLICAS=1",
                )
            )
    for d1, d3 in _drive_pairs(results):
        busiest = max(d3["redis_cpu_us_per_master"])
        case = f"{d3['shards']} shards, groups of {d3['group']}"
        rows.append(
            Row(
                f"cluster Redis side alone, {case}: Redis CPU per payload, all masters",
                _ratio(d3["redis_cpu_us"], d1["redis_cpu_us"]),
                "1 master",
                f"3 masters {d3['redis_cpu_us']:.1f} us ({d3['redis_cpu_us_per_master']}, "
                f"shards {d3['shards_per_master']}), 1 master {d1['redis_cpu_us']:.1f} us; "
                f"{d3['payloads_per_s']:,.0f} vs {d1['payloads_per_s']:,.0f} payloads/s "
                f"from {d3['processes']} driver processes",
            )
        )
        rows.append(
            Row(
                f"cluster Redis side alone, {case}: busiest master's share",
                _ratio(busiest, d3["redis_cpu_us"]),
                "all 3 masters (1/3 is even)",
                f"busiest {busiest:.1f} of {d3['redis_cpu_us']:.1f} us per payload: 3 masters "
                f"carry {d3['redis_cpu_us'] / busiest:.2f} x what 1 does",
            )
        )
    single = results.get("load", {}).get("project")
    if single:
        rows.append(
            Row(
                "cluster, 1 master: Redis CPU per payload (single)",
                _ratio(_per_payload(one["single"], "redis_cpu_us"), single["redis_cpu_us"]),
                "one Redis (project)",
                f"cluster {one['single']['redis_cpu_us']} us (one call per shard), "
                f"one Redis {single['redis_cpu_us']} us",
            )
        )
    return rows


def _drive_pairs(results: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(1 master, 3 masters) results of the cluster drive, per (shards, group)."""
    by_case: dict[tuple[int, int], dict[int, dict[str, Any]]] = {}
    for r in results.get("cluster_drive", []):
        by_case.setdefault((r["shards"], r["group"]), {})[r["masters"]] = r
    return [(c[1], c[3]) for _, c in sorted(by_case.items()) if {1, 3} <= set(c)]


def capacity(results: dict[str, Any], every_s: float = 30.0) -> dict[str, Any] | None:
    """The inputs of docs/capacity.md from one run, and what one core of each
    serves in devices sending a payload every ``every_s`` seconds.

    Needs the project, batch, flush and cluster phases of the same run.
    """
    cluster = results.get("cluster", {}).get("3")
    drive = results.get("cluster_drive")
    single = results.get("load", {}).get("project")
    batch = results.get("batch", {}).get("project")
    flushes = results.get("flush")
    if not (cluster and drive and single and batch and flushes):
        return None
    inputs: dict[str, Any] = {
        "web_us_per_payload_single": round(_per_payload(cluster["single"], "worker_cpu_us"), 1),
        "web_us_per_payload_batch": round(_per_payload(cluster["batch"], "worker_cpu_us"), 1),
        "one_redis_web_us_per_payload_single": single["worker_cpu_us"],
        "one_redis_web_us_per_payload_batch": round(_per_payload(batch, "worker_cpu_us"), 1),
        "flush_rows_per_s": max(f["rows_per_s"] for f in flushes),
    }
    redis = [
        {
            "shards": d3["shards"],
            "group": d3["group"],
            "us_per_payload": d3["redis_cpu_us"],
            "one_master_us_per_payload": d1["redis_cpu_us"],
            "busiest_master_share": round(
                max(d3["redis_cpu_us_per_master"]) / d3["redis_cpu_us"], 3
            ),
            "devices_per_master_core": round(every_s * 1e6 / d3["redis_cpu_us"]),
        }
        for d1, d3 in _drive_pairs(results)
    ]
    web = {
        name.replace("_us_per_payload", "_devices_per_core"): round(every_s * 1e6 / us)
        for name, us in inputs.items()
        if "_us_per_payload" in name
    }
    return {"every_s": every_s, "inputs": inputs, "web_devices_per_core": web, "redis": redis}


def _capacity_rows(results: dict[str, Any]) -> list[Row]:
    found = capacity(results)
    if not found:
        return []
    i, w = found["inputs"], found["web_devices_per_core"]
    rows = [
        Row(
            "capacity: devices per web core (one payload / 30 s)",
            None,
            "(derived)",
            f"single POST {w['web_devices_per_core_single']:,}, batched "
            f"{w['web_devices_per_core_batch']:,} (cluster path: "
            f"{i['web_us_per_payload_single']:.0f} / {i['web_us_per_payload_batch']:.1f} us "
            "per payload)",
        )
    ]
    for r in found["redis"]:
        rows.append(
            Row(
                f"capacity: devices per Redis master core, {r['shards']} shards, "
                f"groups of {r['group']}",
                None,
                "(derived)",
                f"{r['devices_per_master_core']:,} ({r['us_per_payload']:.1f} us per payload); "
                f"the busiest of 3 masters takes {r['busiest_master_share']:.0%} of the work",
            )
        )
    rows.append(
        Row(
            "capacity: flush rows/s (one flusher)",
            None,
            "(derived)",
            f"{i['flush_rows_per_s']:,.0f} rows/s: a window of R counter hashes flushes in "
            f"R / {i['flush_rows_per_s']:,.0f} s",
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
        + _history_rows(results.get("history", []))
        + _memory_rows(results.get("memory", {}))
        + _cluster_rows(results)
        + _capacity_rows(results)
        + _worker_rows(results.get("workers", []))
        + _availability_rows(results.get("availability", {}))
    )


def median_rows(tables: list[list[Row]]) -> list[Row]:
    """One table from several runs of the same phases: each row is its median
    run's (ratio, verdict and context), and the context adds the range over
    the runs that measured it (a single run's table comes back as it was).

    With an odd number of runs the median is one run's own row, so its
    verdict always agrees with its ratio. Raises ValueError when the runs'
    tables do not list the same figures.
    """
    merged = []
    for versions in zip(*tables, strict=True):
        if len({(r.figure, r.peer) for r in versions}) != 1:
            raise ValueError(f"the runs' tables differ: {versions[0].figure!r}")
        measured = sorted((r for r in versions if r.ratio is not None), key=lambda r: r.ratio)
        if len(measured) < 2:
            merged.append(measured[0] if measured else versions[0])
            continue
        middle = measured[len(measured) // 2]
        spread = f"{measured[0].ratio:.2f} to {measured[-1].ratio:.2f} over {len(measured)} runs"
        merged.append(replace(middle, context=f"{middle.context} [{spread}]"))
    return merged


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

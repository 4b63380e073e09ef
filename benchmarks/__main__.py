"""``python -m benchmarks``: run the phases, print the ratio table, write JSON.

    python -m benchmarks [--duration S] [--connections N] [--only PHASE ...]
                         [--json out.json] [--markdown out.md]

Servers: REDIS_URL (default redis://127.0.0.1:6379/8) and DATABASE_URL
(default postgresql://postgres@127.0.0.1:5432/test); the run works under its
own key prefix and PostgreSQL schema and removes both at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time

from . import load_wrk, report, runner
from .servers import WorkerSetup


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _odd(text: str) -> int:
    n = int(text)
    if n < 1 or n % 2 == 0:
        raise argparse.ArgumentTypeError(f"an odd number of runs, 1 or more, not {n}")
    return n


def parse(argv: list[str]) -> tuple[runner.Options, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load phase [10]")
    p.add_argument(
        "--slice",
        type=float,
        default=2.0,
        help="seconds of one interleaved slice of a load phase [2]",
    )
    p.add_argument("--connections", type=int, default=32, help="concurrent connections [32]")
    p.add_argument("--threads", type=int, default=1, help="wrk threads [1]")
    p.add_argument(
        "--close",
        action="store_true",
        help="send Connection: close (a TCP connection per request, like devices "
        "posting every 30 s); default: keep-alive where the server allows it",
    )
    p.add_argument(
        "--loader",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed, else Python [auto]",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=runner.PHASES,
        default=list(runner.DEFAULT_PHASES),
        metavar="PHASE",
        help=f"phases to run, of {', '.join(runner.PHASES)} "
        "[all but workers, profile, availability and cluster]",
    )
    p.add_argument("--batch-size", type=int, default=500, help="payloads per batch request [500]")
    p.add_argument(
        "--flush-keys",
        type=_ints,
        default=(10_000, 100_000),
        help="keys per flushed window, comma-separated [10000,100000]",
    )
    p.add_argument("--memory-keys", type=int, default=100_000)
    p.add_argument(
        "--history-keys",
        type=_ints,
        default=(100, 1000),
        help="for --only history: keys per 5-minute window, comma-separated; a year of "
        "100 is ~10.5 M rows [100,1000]",
    )
    p.add_argument("--history-days", type=int, default=365, help="days filled [365]")
    p.add_argument("--history-reps", type=int, default=100, help="runs of each query [100]")
    p.add_argument(
        "--history-raw-reps", type=int, default=10, help="runs of each raw-rows query [10]"
    )
    p.add_argument("--memory-tokens", type=int, default=100_000)
    p.add_argument(
        "--cluster-shards",
        type=int,
        default=runner.Options.cluster_shards,
        help=f"STATS_SHARDS in the cluster phase [{runner.Options.cluster_shards}]",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    p.add_argument("--worker-class", help="override gunicorn's worker class for every server")
    p.add_argument("--workers", type=int, help="override gunicorn's workers for every server")
    p.add_argument("--worker-threads", type=int, help="override gunicorn's --threads")
    p.add_argument(
        "--worker-setups",
        default=",".join(runner.DEFAULT_WORKER_SETUPS),
        help="for --only workers: CLASS[:WORKERS[xTHREADS]], comma-separated",
    )
    p.add_argument(
        "--profile-dir",
        default=runner.Options.profile_dir,
        help=f"for --only profile [{runner.Options.profile_dir}]",
    )
    p.add_argument(
        "--slow-clients",
        type=int,
        default=runner.Options.slow_clients,
        help="for --only availability: idle and slow connections held open [200]",
    )
    p.add_argument(
        "--probes",
        type=int,
        default=runner.Options.probes,
        help="for --only availability: POST /stats probes per figure [200]",
    )
    p.add_argument(
        "--live-keys",
        type=int,
        default=runner.Options.live_keys,
        help="for --only availability: counter hashes for the GET /stats/live figure [200000]",
    )
    p.add_argument(
        "--repeat",
        type=_odd,
        default=1,
        help="run the chosen phases this many times (an odd number); each figure is "
        "its median run's, with the range over the runs [1]",
    )
    p.add_argument("--json", help="write the results and the table to this file")
    p.add_argument("--markdown", help="write the machine, command and table as Markdown")
    a = p.parse_args(argv)
    return runner.Options(
        duration=a.duration,
        slice_seconds=a.slice,
        connections=a.connections,
        threads=a.threads,
        close=a.close,
        loader=a.loader,
        only=tuple(a.only),
        batch_size=a.batch_size,
        flush_keys=a.flush_keys,
        memory_keys=a.memory_keys,
        memory_tokens=a.memory_tokens,
        cluster_shards=a.cluster_shards,
        history_keys=a.history_keys,
        history_days=a.history_days,
        history_reps=a.history_reps,
        history_raw_reps=a.history_raw_reps,
        warmup=a.warmup,
        setup=WorkerSetup(a.worker_class, a.workers, a.worker_threads),
        worker_setups=tuple(a.worker_setups.split(",")),
        redis_url=os.environ.get("REDIS_URL") or runner.Options.redis_url,
        database_url=os.environ.get("DATABASE_URL") or runner.Options.database_url,
        profile_dir=a.profile_dir,
        slow_clients=a.slow_clients,
        probes=a.probes,
        live_keys=a.live_keys,
        log=_log,
    ), a


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # noqa: T20


def markdown(results: dict, table: list[report.Row], command: str) -> str:
    m, s = results["machine"], results["settings"]
    served = results.get("servers", {}).get("project", s["workers"])
    return "\n".join(
        [
            f"Measured {results['date']} on {m['nproc']} cores ({m['cpu']}), "
            f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, {m['wrk']}. "
            f"Load: {results['loader']}, {s['connections']} connections"
            f"{' (Connection: close)' if s['close'] else ''}, {s['duration']:g} s per figure in "
            f"{s['slice']:g} s slices interleaved across the servers. Every server: gunicorn "
            f"`-c {results['gunicorn_config']}`, {served}."
            + (
                f" Each figure is the median of {s['repeat']} runs, with the range in brackets."
                if s.get("repeat", 1) > 1
                else ""
            ),
            "",
            "```sh",
            command,
            "```",
            "",
            report.markdown_table(table),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    # SIGTERM ends the run like Ctrl-C: the sandbox (keys, schemas) is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    options, args = parse(sys.argv[1:] if argv is None else argv)
    if options.loader in ("auto", "wrk") and not load_wrk.available():
        if options.loader == "wrk":
            _log("wrk is not installed: apt-get install wrk (or use --loader python)")
            return 2
        _log(
            "wrk is not installed (apt-get install wrk): using the Python load generator, "
            "which shares the CPU with the servers and saturates sooner"
        )
    loader = "wrk" if options.loader != "python" and load_wrk.available() else "python"
    started = time.time()
    runs = []
    for n in range(args.repeat):
        if args.repeat > 1:
            _log(f"run {n + 1} of {args.repeat}")
        runs.append(runner.run(options))
    results = dict(runs[0])
    if args.repeat > 1:
        results["runs"] = runs
    results.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        machine=report.machine(),
        loader=loader,
        command="python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        settings={
            "duration": options.duration,
            "slice": options.slice_seconds,
            "connections": options.connections,
            "close": options.close,
            "workers": options.setup.label,
            "repeat": args.repeat,
        },
    )
    table = report.median_rows([report.rows(r) for r in runs])
    results["table"] = report.as_dicts(table)
    results["capacity"] = report.capacity(results)
    print(report.text_table(table))  # noqa: T20
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results, table, results["command"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m load_tests sweep`: the same run at a list of request rates or concurrencies.

Each point is a normal run written to `<result-dir>/rate-<R>` or `<result-dir>/concurrency-<C>`;
then sweep.json / sweep.csv (one row per point: offered load, throughput, goodput, attainment,
latency percentiles) and sweep.png (attainment and goodput vs offered load) go in the result dir.
With --fail-on-slo the exit code is 1 when any point missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from load_tests.config import LoadTestError
from load_tests.options import add_run_arguments, config_from_args
from load_tests.run_command import execute, verdict_exit_code

_ROW_KEYS = ("completed", "failed", "duration", "request_throughput", "output_throughput", "request_goodput",
             "slo_attainment", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "p99_e2el_ms")


def _values(text: str, flag: str, kind: type[float] | type[int]) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise LoadTestError(f"{flag} takes a comma-separated list, got {text!r}") from e
    if not values:
        raise LoadTestError(f"{flag} is empty")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--request-rates", default=None, help="e.g. 1,2,4,8 (req/s)")
    which.add_argument("--max-concurrencies", default=None, help="e.g. 1,4,16")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.result_dir is None:
        raise LoadTestError("sweep needs --result-dir (one sub-directory per point goes there)")
    root = Path(args.result_dir)
    if args.request_rates:
        points = [("request_rate", v, f"rate-{v:g}") for v in _values(args.request_rates, "--request-rates", float)]
    else:
        points = [("max_concurrency", v, f"concurrency-{v}")
                  for v in _values(args.max_concurrencies, "--max-concurrencies", int)]
    configs = [config_from_args(args, **{field: value, "result_dir": root / name}) for field, value, name in points]
    rows: list[dict[str, Any]] = []
    exit_code = 0
    for (field, value, name), config in zip(points, configs, strict=True):
        print(f"sweep point {name} ({len(rows) + 1}/{len(points)})", file=sys.stderr, flush=True)
        records, analysis = execute(config)
        s = analysis.summary
        window = config.send_window_s or s["duration"]  # the load was offered while sending
        offered = len(records) / window if window else 0.0
        rows.append({"point": name, field: value, "offered_rate": offered, **{k: s.get(k) for k in _ROW_KEYS}})
        exit_code = max(exit_code, verdict_exit_code(config, records, analysis))
    (root / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from load_tests.results.plots_multi import plot_sweep

    plot_sweep(root / "sweep.png", rows)
    for row in rows:
        att = row["slo_attainment"]
        print(f"{row['point']:<20} offered {row['offered_rate']:6.2f} req/s  done {row['request_throughput']:6.2f} req/s"
              f"  p99 ttft {row['p99_ttft_ms'] or 0:8.1f} ms  attainment {'-' if att is None else f'{att:.1%}'}")
    print(f"wrote sweep.json, sweep.csv, sweep.png and one directory per point to {root}")
    return exit_code

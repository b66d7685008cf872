"""`python -m load_tests report DIR`: re-render a run's summary, time series and plots from its
requests.jsonl, optionally with other SLO targets or another window (`--goodput`, `--window-s`).

The run's wall-clock start, config and controller decisions come from the "run" section of the
existing summary.json; nothing is sent to any server.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from load_tests.config import GoodputTargets, LoadTestError
from load_tests.options import parse_goodput, parse_percentiles
from load_tests.results.analysis import REQUESTS, SUMMARY, analyze, write_results
from load_tests.results.records import ClientRecord, RunInfo, read_records
from load_tests.results.summary import format_summary


def load_run(result_dir: Path) -> tuple[list[ClientRecord], RunInfo, dict[str, Any]]:
    """(records, run info, old summary) of a result directory; LoadTestError names what is missing."""
    summary_path, requests_path = result_dir / SUMMARY, result_dir / REQUESTS
    for path in (summary_path, requests_path):
        if not path.is_file():
            raise LoadTestError(f"{path} not found: is {result_dir} a load_tests result directory?")
    try:
        summary = json.loads(summary_path.read_text())
        info = RunInfo.from_dict(summary["run"])
        records = read_records(requests_path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LoadTestError(f"cannot read the run in {result_dir}: {e}") from e
    return records, info, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("result_dir", metavar="DIR", help="a --result-dir of an earlier run")
    parser.add_argument("--goodput", nargs="+", metavar="METRIC:MS", help="re-evaluate with these SLO targets")
    parser.add_argument("--metric-percentiles", default=None, help="default: the run's own")
    parser.add_argument("--window-s", type=float, default=None, help="default: the run's own")
    parser.add_argument("--no-plots", action="store_true")


def run(args: argparse.Namespace) -> int:
    result_dir = Path(args.result_dir)
    records, info, old = load_run(result_dir)
    config = info.config
    slo = parse_goodput(args.goodput) if args.goodput else GoodputTargets(**(config.get("slo") or {}))
    percentiles = (parse_percentiles(args.metric_percentiles) if args.metric_percentiles
                   else list(config.get("metric_percentiles") or [50.0, 90.0, 99.0]))
    window_s = args.window_s or old.get("window_s")
    analysis = analyze(records, info, slo, percentiles, window_s)
    written = write_results(result_dir, records, analysis, slo, plots=not args.no_plots)
    print(format_summary(analysis.summary, percentiles))
    print(f"re-rendered {', '.join(p.name for p in written)} in {result_dir}")
    return 0

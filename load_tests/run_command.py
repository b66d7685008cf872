"""`python -m load_tests run`: one bounded load test, its files, its table, its exit code.

Exit codes: 0 done (and the SLO met, with --fail-on-slo); 1 SLO missed with --fail-on-slo;
2 a usage problem (bad flag, file, unreachable or non-loopback target), printed as one message;
130 interrupted by Ctrl-C (the files still cover the run up to then).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from load_tests.config import RunConfig
from load_tests.gen.runner import run_load
from load_tests.options import add_run_arguments, config_from_args
from load_tests.results.analysis import Analysis, analyze, slo_verdict, write_results
from load_tests.results.records import ClientRecord
from load_tests.results.summary import format_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def execute(config: RunConfig) -> tuple[list[ClientRecord], Analysis]:
    """Run the load, analyze it, write the files when a result dir is set."""
    records, info = asyncio.run(run_load(config))
    analysis = analyze(records, info, config.slo, config.metric_percentiles, config.window_s)
    if config.result_dir is not None:
        written = write_results(Path(config.result_dir), records, analysis, config.slo, plots=config.plots)
        if not config.quiet:
            print(f"wrote {', '.join(p.name for p in written)} to {config.result_dir}", file=sys.stderr)
    return records, analysis


def verdict_exit_code(config: RunConfig, records: list[ClientRecord], analysis: Analysis) -> int:
    if not config.fail_on_slo:
        return 0
    passed, message = slo_verdict(records, analysis.summary, config.slo, config.slo_target)
    print(message)
    return 0 if passed else 1


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    records, analysis = execute(config)
    print(format_summary(analysis.summary, config.metric_percentiles))
    if analysis.summary["interrupted"]:
        print("interrupted (Ctrl-C): the results cover the run up to then", file=sys.stderr)
        return 130
    return verdict_exit_code(config, records, analysis)

"""From records to files: `analyze` computes summary, windows and switch events; `write_results`
writes summary.json, requests.jsonl, timeseries.csv and the PNG plots into a result directory.

`slo_verdict` is the `--fail-on-slo` check: it passes when the overall SLO attainment (all set
targets together, failures as misses) is at least the target, and says what missed otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load_tests.config import GoodputTargets
from load_tests.results.records import ClientRecord, RunInfo, write_records
from load_tests.results.slo import misses
from load_tests.results.summary import summarize
from load_tests.results.timeseries import WindowRow, choose_window_s, windows, write_csv

SUMMARY = "summary.json"
REQUESTS = "requests.jsonl"
TIMESERIES = "timeseries.csv"
PLOTS = ("timeline.png", "latency_distributions.png", "attainment.png")


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything computed from one run's records."""

    summary: dict[str, Any]
    rows: list[WindowRow]
    window_s: float


def analyze(records: Sequence[ClientRecord], info: RunInfo, slo: GoodputTargets, percentiles: Sequence[float],
            window_s: float | None = None) -> Analysis:
    window = window_s or choose_window_s(info.duration_s)
    summary = summarize(records, info, slo, percentiles, window)
    return Analysis(summary, windows(records, info.duration_s, window, slo), window)


def write_results(result_dir: Path, records: Sequence[ClientRecord], analysis: Analysis, slo: GoodputTargets,
                  plots: bool = True) -> list[Path]:
    """Write the result files (records too unless they are already there); return the paths."""
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / SUMMARY).write_text(json.dumps(analysis.summary, indent=2, allow_nan=False) + "\n")
    write_records(result_dir / REQUESTS, list(records))
    write_csv(result_dir / TIMESERIES, analysis.rows)
    written = [result_dir / SUMMARY, result_dir / REQUESTS, result_dir / TIMESERIES]
    if plots:
        from load_tests.results.plots import plot_attainment, plot_distributions, plot_timeline

        events = analysis.summary["switch_events"]
        plot_timeline(result_dir / PLOTS[0], records, analysis.rows, events, slo)
        plot_distributions(result_dir / PLOTS[1], records, slo)
        plot_attainment(result_dir / PLOTS[2], analysis.rows, events, slo)
        written += [result_dir / name for name in PLOTS]
    return written


def slo_verdict(records: Sequence[ClientRecord], summary: dict[str, Any], slo: GoodputTargets,
                target: float) -> tuple[bool, str]:
    """(passed, message) of `--fail-on-slo`."""
    got = summary.get("slo_attainment")
    if got is None:
        return False, "SLO check failed: no requests were sent"
    missed = ", ".join(f"{k} {v}" for k, v in misses(records, slo).items() if v)
    if got >= target:
        return True, f"SLO check passed: attainment {got:.2%} >= target {target:.2%}"
    return False, f"SLO check FAILED: attainment {got:.2%} < target {target:.2%} (misses: {missed})"

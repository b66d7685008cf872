"""The run's summary: overall and per-variant metrics, SLO attainment, switch events.

`summarize(...)` returns the dict written to summary.json. Top-level keys follow `vllm bench
serve` where it has them (`completed`, `request_throughput`, `output_throughput`, `mean_ttft_ms`,
`p99_tpot_ms`, `request_goodput`, ...); the rest are ours (`slo_attainment*`, `variants`,
`switch_events`, `observed_flips`, `*_send_lag_ms`, `run`). `format_summary` renders the short
table printed at the end of a run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from load_tests.config import GoodputTargets
from load_tests.results.records import ClientRecord, RunInfo
from load_tests.results.slo import attainment, slo_keys
from load_tests.results.stats import (
    error_kinds,
    latency_keys,
    peak_keys,
    percentile_name,
    send_lag_keys,
    throughput_keys,
)
from load_tests.results.switches import infer_flips, switch_events


def group_summary(records: Sequence[ClientRecord], duration_s: float, slo: GoodputTargets,
                  percentiles: Sequence[float]) -> dict[str, Any]:
    """Throughput, errors, latency statistics and SLO keys of one group of requests."""
    out: dict[str, Any] = dict(throughput_keys(records, duration_s))
    out["errors"] = error_kinds(records)
    out.update(slo_keys(attainment(records, slo, duration_s), slo))
    out.update(latency_keys(records, percentiles))
    return out


def summarize(records: Sequence[ClientRecord], info: RunInfo, slo: GoodputTargets,
              percentiles: Sequence[float], window_s: float) -> dict[str, Any]:
    cfg = info.config
    duration = info.duration_s
    ok_total = sum(r.is_ok for r in records)
    summary: dict[str, Any] = {
        "date": dt.datetime.fromtimestamp(info.start_unix).strftime("%Y%m%d-%H%M%S"),
        "label": cfg.get("label"),
        "endpoint_type": cfg.get("endpoint"),
        "model_id": info.model,
        "base_url": cfg.get("base_url"),
        "num_prompts": len(records),
        "request_rate": cfg.get("request_rate"),
        "burstiness": cfg.get("burstiness"),
        "max_concurrency": cfg.get("max_concurrency"),
        "trace": (cfg.get("trace") or {}).get("name"),
        "duration": duration,
        "interrupted": info.interrupted,
        "slo": {f"{m}_ms": t for m, t in slo.targets().items()},
        "metadata": cfg.get("metadata") or {},
    }
    summary.update(group_summary(records, duration, slo, percentiles))
    summary.update(peak_keys(records))
    summary.update(send_lag_keys(records))
    variants: dict[str, Any] = {}
    for name in sorted({r.variant for r in records}):
        group = [r for r in records if r.variant == name]
        variants[name] = group_summary(group, duration, slo, percentiles)
        variants[name]["share"] = sum(r.is_ok for r in group) / ok_total if ok_total else 0.0
    summary["variants"] = variants
    events = switch_events(records, info.decisions, window_s, duration)
    summary["switch_events_source"] = "controller" if info.decisions else "inferred"
    summary["switch_events"] = [asdict(e) for e in events]
    summary["num_switches"] = sum(e.is_switch for e in events)
    summary["observed_flips"] = [asdict(f) for f in infer_flips(records, window_s)]
    summary["window_s"] = window_s
    summary["run"] = info.to_dict()
    return summary


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_summary(summary: dict[str, Any], percentiles: Sequence[float]) -> str:
    """A short human table, in the spirit of vLLM's '==== Serving Benchmark Result ===='."""
    lines = ["=" * 20 + " Load Test Result " + "=" * 20]
    lines.append(f"{'Requests (ok/failed):':<34}{summary['completed']}/{summary['failed']}  {summary['errors']}")
    interrupted = "  (interrupted by Ctrl-C)" if summary.get("interrupted") else ""
    lines.append(f"{'Duration (s):':<34}{summary['duration']:.2f}{interrupted}")
    lines.append(f"{'Request throughput (req/s):':<34}{summary['request_throughput']:.2f}")
    lines.append(f"{'Output token throughput (tok/s):':<34}{summary['output_throughput']:.1f}")
    if "slo_attainment" in summary:
        per_metric = "  ".join(
            f"{k.removeprefix('slo_attainment_')} {v:.1%}"
            for k, v in summary.items()
            if k.startswith("slo_attainment_") and v is not None
        )
        overall = summary["slo_attainment"]
        lines.append(f"{'SLO attainment (all together):':<34}{'-' if overall is None else f'{overall:.1%}'}  ({per_metric})")
        lines.append(f"{'Goodput (req/s):':<34}{summary['request_goodput']:.2f}")
    header = f"{'variant':<16}{'share':>7}{'ok':>7}{'fail':>6}" + "".join(
        f"{percentile_name(p) + ' ' + m:>13}" for m in ("ttft", "tpot") for p in percentiles
    )
    if "slo_attainment" in summary:
        header += f"{'SLO att.':>10}"
    lines.append(header)
    rows = [("all", {**summary, "share": 1.0}), *summary["variants"].items()]
    for name, v in rows:
        row = f"{name:<16}{v['share']:>7.0%}{v['completed']:>7}{v['failed']:>6}" + "".join(
            f"{_ms(v.get(f'{percentile_name(p)}_{m}_ms')):>13}" for m in ("ttft", "tpot") for p in percentiles
        )
        if "slo_attainment" in summary:
            row += f"{'-' if v['slo_attainment'] is None else format(v['slo_attainment'], '.1%'):>10}"
        lines.append(row)
    for e in summary["switch_events"]:
        to_switch = "-" if e["time_to_switch_s"] is None else f"{e['time_to_switch_s']:.2f} s"
        lines.append(
            f"switch ({e['source']}) at {e['time_s']:.2f} s: {e['from_variant']} -> {e['to_variant']}, "
            f"time to switch {to_switch}, failed during {e['failed_during']}/{e['requests_during']}"
        )
    if summary["num_late_sends"]:
        lines.append(f"client fell behind: {summary['num_late_sends']} requests sent >10 ms late "
                     f"(max {summary['max_send_lag_ms']:.0f} ms)")
    lines.append("=" * 58)
    return "\n".join(lines)

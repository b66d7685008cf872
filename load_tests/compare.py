"""`python -m load_tests compare DIR1 DIR2`: two runs side by side, overall and per common variant.

Prints a table of throughput, errors, SLO attainment and latency keys with the relative change;
with `--out DIR` also writes compare.json (the same numbers) and compare.png (overlaid TTFT/TPOT
CDFs and attainment of both runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from load_tests.report import load_run

_KEYS = ("completed", "failed", "error_rate", "request_throughput", "output_throughput", "request_goodput",
         "slo_attainment", "slo_attainment_ttft", "slo_attainment_tpot", "slo_attainment_e2el")
_LATENCY = ("ttft", "tpot", "itl", "itl_per_token", "e2el")


def comparable_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = [k for k in _KEYS if k in a and k in b]
    keys += [k for k in a if k.endswith("_ms") and k in b and k.split("_", 1)[1][:-3] in _LATENCY
             and not k.startswith("std_")]
    return keys


def compare_groups(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for key in comparable_keys(a, b):
        x, y = a.get(key), b.get(key)
        change = (y - x) / x if isinstance(x, int | float) and isinstance(y, int | float) and x else None
        out[key] = {"a": x, "b": y, "change": change}
    return out


def compare_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """{"overall": {...}, "variants": {name: {...}}} for variants present in both runs."""
    common = sorted(set(a.get("variants", {})) & set(b.get("variants", {})))
    return {
        "overall": compare_groups(a, b),
        "variants": {v: compare_groups(a["variants"][v], b["variants"][v]) for v in common},
        "only_in_a": sorted(set(a.get("variants", {})) - set(common)),
        "only_in_b": sorted(set(b.get("variants", {})) - set(common)),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def format_comparison(result: dict[str, Any], name_a: str, name_b: str) -> str:
    lines = [f"{'metric':<28}{name_a[-22:]:>24}{name_b[-22:]:>24}{'change':>10}"]
    groups = [("all", result["overall"]), *result["variants"].items()]
    for group, rows in groups:
        lines.append(f"--- {group} " + "-" * 60)
        for key, row in rows.items():
            change = "-" if row["change"] is None else f"{row['change']:+.1%}"
            lines.append(f"{key:<28}{_fmt(row['a']):>24}{_fmt(row['b']):>24}{change:>10}")
    for side, names in (("only in " + name_a, result["only_in_a"]), ("only in " + name_b, result["only_in_b"])):
        if names:
            lines.append(f"variants {side}: {', '.join(names)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir_a", metavar="DIR1")
    parser.add_argument("dir_b", metavar="DIR2")
    parser.add_argument("--out", default=None, help="write compare.json and compare.png here")


def run(args: argparse.Namespace) -> int:
    records_a, _, summary_a = load_run(Path(args.dir_a))
    records_b, _, summary_b = load_run(Path(args.dir_b))
    result = compare_summaries(summary_a, summary_b)
    print(format_comparison(result, args.dir_a, args.dir_b))
    if args.out:
        from load_tests.results.plots_multi import plot_compare

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps({"a": args.dir_a, "b": args.dir_b, **result}, indent=2))
        plot_compare(out / "compare.png", (args.dir_a, records_a, summary_a), (args.dir_b, records_b, summary_b))
        print(f"wrote compare.json, compare.png to {out}")
    return 0

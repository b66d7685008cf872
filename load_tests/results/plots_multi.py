"""PNG plots across runs (matplotlib, Agg): a sweep's curves and a two-run comparison.

- sweep.png: SLO attainment and goodput vs offered load, and p99 TTFT/TPOT vs offered load,
  one point per sweep point.
- compare.png: overlaid TTFT and TPOT CDFs of two runs, and their attainment per variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from load_tests.results.records import ClientRecord
from load_tests.results.stats import metric_values


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def plot_sweep(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    rows = sorted(rows, key=lambda r: r["offered_rate"])
    x = [r["offered_rate"] for r in rows]
    fig, (slo_ax, lat_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    slo_ax.plot(x, [_num(r["slo_attainment"]) for r in rows], marker="o", color="black", label="SLO attainment")
    slo_ax.set_ylim(-0.05, 1.05)
    slo_ax.set_xlabel("offered load (req/s)")
    slo_ax.set_ylabel("SLO attainment")
    good = slo_ax.twinx()
    good.plot(x, [_num(r["request_goodput"]) for r in rows], marker="x", color="tab:green", label="goodput")
    good.plot(x, [_num(r["request_throughput"]) for r in rows], marker=".", color="tab:blue", label="throughput")
    good.set_ylabel("req/s")
    good.legend(fontsize=7, loc="lower right")
    slo_ax.legend(fontsize=7, loc="lower left")
    slo_ax.grid(alpha=0.3)
    for key, color in (("p99_ttft_ms", "tab:orange"), ("p99_tpot_ms", "tab:purple"), ("median_ttft_ms", "tab:red")):
        lat_ax.plot(x, [_num(r[key]) for r in rows], marker="o", color=color, label=key)
    lat_ax.set_xlabel("offered load (req/s)")
    lat_ax.set_ylabel("ms")
    lat_ax.set_yscale("log")
    lat_ax.legend(fontsize=7)
    lat_ax.grid(alpha=0.3)
    for r, xi in zip(rows, x, strict=True):
        slo_ax.annotate(r["point"], (xi, _num(r["slo_attainment"])), fontsize=6, xytext=(2, 4),
                        textcoords="offset points")
    fig.suptitle("Sweep: attainment, goodput and latency vs offered load")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


Run = tuple[str, Sequence[ClientRecord], dict[str, Any]]


def plot_compare(path: Path, a: Run, b: Run) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for (name, records, _), style in ((a, "-"), (b, "--")):
        for ax, metric in zip(axes[:2], ("ttft", "tpot"), strict=True):
            values = np.sort(metric_values(records, metric))
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", ls=style,
                        label=f"{Path(name).name or name} (n={values.size})")
    for ax, metric in zip(axes[:2], ("TTFT", "TPOT"), strict=True):
        ax.set_xlabel(f"{metric} (ms)")
        ax.set_ylabel("fraction ≤ x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    variants = sorted(set(a[2].get("variants", {})) | set(b[2].get("variants", {})))
    groups = ["all", *variants]
    pos = np.arange(len(groups))
    for offset, (name, _, summary) in ((-0.2, a), (0.2, b)):
        stats = [summary, *(summary.get("variants", {}).get(g, {}) for g in variants)]
        vals = [_num(st.get("slo_attainment")) if "slo_attainment" in summary
                else 1.0 - (st.get("error_rate") or 0.0) if st else float("nan") for st in stats]
        axes[2].bar(pos + offset, vals, width=0.4, label=Path(name).name or name)
    axes[2].set_xticks(pos, groups, fontsize=8)
    axes[2].set_ylim(0, 1.05)
    axes[2].set_ylabel("SLO attainment (or success rate)")
    axes[2].legend(fontsize=7)
    fig.suptitle("Comparison of two runs (solid: first, dashed: second)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

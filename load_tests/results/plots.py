"""PNG plots of one run (matplotlib, Agg backend): timeline, latency distributions, attainment.

- timeline.png: offered load, throughput, failures and goodput over time, then TTFT and TPOT per
  request with window percentiles; the active (dominant) variant shaded, switch events marked.
- latency_distributions.png: per-variant CDFs of TTFT, TPOT, per-token ITL and E2E, SLO lines.
- attainment.png: SLO attainment over time per variant, and attainment/goodput vs offered load.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from load_tests.config import GoodputTargets
from load_tests.results.records import ClientRecord
from load_tests.results.stats import metric_values
from load_tests.results.timeseries import ALL, WindowRow


def variant_colors(names: Iterable[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(sorted(names))}


def _shade_active(ax: Axes, rows: Sequence[WindowRow], colors: dict[str, Any]) -> None:
    active = None
    for row in (r for r in rows if r.variant == ALL):
        active = row.dominant_variant or active
        if active is not None and active in colors:
            ax.axvspan(row.window_start_s, row.window_end_s, color=colors[active], alpha=0.08, lw=0)


def _mark_switches(ax: Axes, events: Sequence[dict[str, Any]], label: bool) -> None:
    for e in events:
        style = "-" if e["source"] == "controller" else "--"
        ax.axvline(e["time_s"], color="black", ls=style, lw=1.0, alpha=0.7)
        if label and e["to_variant"]:
            ax.annotate(f"→{e['to_variant']}", (e["time_s"], 1.0), xycoords=("data", "axes fraction"),
                        fontsize=7, ha="left", va="top")


def _latency_panel(ax: Axes, records: Sequence[ClientRecord], rows: Sequence[WindowRow], metric: str,
                   slo_ms: float | None, colors: dict[str, Any]) -> None:
    for variant, color in colors.items():
        mine = [r for r in records if r.is_ok and r.variant == variant and getattr(r, f"{metric}_ms") is not None]
        if mine:
            ax.scatter([r.send_s for r in mine], [getattr(r, f"{metric}_ms") for r in mine], s=6, color=color,
                       alpha=0.5, label=variant)
    overall = [r for r in rows if r.variant == ALL]
    mids = [(r.window_start_s + r.window_end_s) / 2 for r in overall]
    for p, style in ((50, "-"), (99, ":")):
        ys = [getattr(r, f"p{p}_{metric}_ms") for r in overall]
        ax.plot(mids, [np.nan if y is None else y for y in ys], color="black", ls=style, lw=1, label=f"p{p}")
    if slo_ms is not None:
        ax.axhline(slo_ms, color="red", lw=1, ls="--", label="SLO")
    ax.set_ylabel(f"{metric.upper()} (ms)")
    ax.legend(fontsize=7, loc="upper right", ncol=3)


def plot_timeline(path: Path, records: Sequence[ClientRecord], rows: Sequence[WindowRow],
                  events: Sequence[dict[str, Any]], slo: GoodputTargets) -> None:
    colors = variant_colors({r.variant for r in records if r.is_ok})
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    overall = [r for r in rows if r.variant == ALL]
    mids = [(r.window_start_s + r.window_end_s) / 2 for r in overall]
    load = axes[0]
    load.step(mids, [r.offered_rate for r in overall], where="mid", label="offered (req/s)", color="gray")
    load.plot(mids, [r.request_throughput for r in overall], label="completed (req/s)", color="tab:blue")
    load.plot(mids, [r.goodput for r in overall], label="goodput (req/s)", color="tab:green")
    load.bar(mids, [r.num_failed / (r.window_end_s - r.window_start_s) for r in overall],
             width=(overall[0].window_end_s - overall[0].window_start_s) * 0.8 if overall else 1.0,
             color="tab:red", alpha=0.5, label="failed (req/s)")
    load.set_ylabel("requests/s")
    load.legend(fontsize=7, loc="upper right", ncol=4)
    _latency_panel(axes[1], records, rows, "ttft", slo.ttft_ms, colors)
    _latency_panel(axes[2], records, rows, "tpot", slo.tpot_ms, colors)
    for i, ax in enumerate(axes):
        _shade_active(ax, rows, colors)
        _mark_switches(ax, events, label=i == 0)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time since start (s)  — shading: active variant; lines: switch events")
    fig.suptitle("Load and latency over time")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_distributions(path: Path, records: Sequence[ClientRecord], slo: GoodputTargets) -> None:
    variants = sorted({r.variant for r in records if r.is_ok})
    colors = variant_colors(variants)
    panels = (("ttft", slo.ttft_ms), ("tpot", slo.tpot_ms), ("itl_per_token", None), ("e2el", slo.e2el_ms))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (metric, target) in zip(axes.flat, panels, strict=True):
        for v in variants:
            values = np.sort(metric_values([r for r in records if r.variant == v], metric))
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                        color=colors[v], label=f"{v} (n={values.size})")
        if target is not None:
            ax.axvline(target, color="red", ls="--", lw=1, label="SLO")
        ax.set_xlabel(f"{metric.upper().replace('_', ' ')} (ms)")
        ax.set_ylabel("fraction ≤ x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency distributions per variant (CDF)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_attainment(path: Path, rows: Sequence[WindowRow], events: Sequence[dict[str, Any]],
                    slo: GoodputTargets) -> None:
    what = "SLO attainment" if slo.is_set else "success rate (no --goodput SLO)"
    names = sorted({r.variant for r in rows})
    colors = {**variant_colors([n for n in names if n != ALL]), ALL: "black"}
    fig, (over_time, vs_load) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        mine = [r for r in rows if r.variant == name and r.slo_attainment is not None]
        over_time.plot([(r.window_start_s + r.window_end_s) / 2 for r in mine], [r.slo_attainment for r in mine],
                       marker=".", color=colors[name], lw=2 if name == ALL else 1, label=name)
    _mark_switches(over_time, events, label=True)
    over_time.set_ylim(-0.05, 1.05)
    over_time.set_xlabel("time since start (s)")
    over_time.set_ylabel(what)
    over_time.legend(fontsize=7)
    over_time.grid(alpha=0.3)
    overall = [r for r in rows if r.variant == ALL and r.num_sent]
    vs_load.scatter([r.offered_rate for r in overall], [r.slo_attainment for r in overall],
                    color="black", s=14, label=what)
    vs_load.set_ylim(-0.05, 1.05)
    vs_load.set_xlabel("offered load in the window (req/s)")
    vs_load.set_ylabel(what)
    goodput = vs_load.twinx()
    goodput.scatter([r.offered_rate for r in overall], [r.goodput for r in overall],
                    color="tab:green", marker="x", s=14, label="goodput (req/s)")
    goodput.set_ylabel("goodput (req/s)", color="tab:green")
    vs_load.legend(fontsize=7, loc="lower left")
    vs_load.grid(alpha=0.3)
    fig.suptitle(f"{what} over time and vs offered load (one point per window)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

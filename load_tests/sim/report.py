"""Scores of a simulated run, the issue's targets beside them, and the per-trace plot.

A request attains the SLO when it succeeded and met every target its class sets (TTFT, TPOT,
E2E); violations are all other requests, failures included. Goodput = attaining requests per
second. Quality = mean agreement with the full model over the served requests. Recovery after a
step = time from the step to the first 10-s bin of arrivals without a violation (worst step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inference.schema.config.slo import SLOConfig
from load_tests.rate_trace import RateTrace
from load_tests.sim.cluster import Outcome
from load_tests.sim.engine import SimRun

TARGET_TRACES = ("step3x", "burst")
STEADY_TRACES = ("steady", "steady-noisy")
STEADY_COST_RATIO = 1.1  # steady load: sloserve's replica-seconds at most this times static-full's
RAY_COST_RATIO = 1.1  # ray-default settings at most this many times sloserve's replica-seconds are compared
MAX_CHANGES_PER_STEP = 2  # each way: up during the step, back after it
RECOVERY_BIN_S = 10.0


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: str
    num_requests: int
    num_failed: int
    violations: int
    attainment: float
    goodput_rps: float
    quality: float
    quality_loss: float
    replica_seconds: float
    mean_replicas: float
    mix_changes_per_hour: float
    recovery_s: float | None
    variant_share: dict[str, float]
    num_decisions: int
    provisioned: dict[str, int] | None = None
    mix_changes_per_step: list[tuple[int, int]] | None = None  # (during the step, after it until the next)


def attains(out: Outcome, slo: SLOConfig) -> bool:
    if not out.ok:
        return False
    target = slo.target(out.request.slo_class)
    checks = ((out.ttft_s, target.ttft_p95_ms), (out.tpot_s, target.tpot_p95_ms))
    if any(limit is not None and value is not None and value * 1000.0 > limit for value, limit in checks):
        return False
    e2e_s = (out.end_s or 0.0) - out.request.arrival_s
    return target.e2e_p95_ms is None or e2e_s * 1000.0 <= target.e2e_p95_ms


def score(run: SimRun, trace: RateTrace, slo: SLOConfig, quality: dict[str, float],
          provisioned: dict[str, int] | None = None) -> PolicyResult:
    good = [attains(o, slo) for o in run.outcomes]
    served = [o for o in run.outcomes if o.ok]
    n = len(run.outcomes)
    shares = {v: sum(o.variant == v for o in served) / len(served) for v in quality} if served else {}
    mean_quality = sum(quality[o.variant] for o in served) / len(served) if served else 0.0
    recovery = []
    for start_s, end_s in trace.steps():
        missed = {int((o.request.arrival_s - start_s) // RECOVERY_BIN_S)
                  for o, g in zip(run.outcomes, good, strict=True) if not g and start_s <= o.request.arrival_s < end_s}
        first_clean = next(i for i in range(len(missed) + 1) if i not in missed)
        recovery.append(min(first_clean * RECOVERY_BIN_S, end_s - start_s))
    per_step = [
        (sum(start_s <= t < end_s for t in run.mix_change_times), sum(end_s <= t < back_s for t in run.mix_change_times))
        for start_s, end_s, back_s in trace.steps_and_after()
    ]
    return PolicyResult(
        policy=run.policy,
        num_requests=n,
        num_failed=n - len(served),
        violations=n - sum(good),
        attainment=sum(good) / n if n else 1.0,
        goodput_rps=sum(good) / run.duration_s,
        quality=mean_quality,
        quality_loss=1.0 - mean_quality,
        replica_seconds=run.replica_seconds,
        mean_replicas=run.replica_seconds / run.duration_s,
        mix_changes_per_hour=run.mix_changes * 3600.0 / run.duration_s,
        recovery_s=max(recovery) if recovery else None,
        variant_share=shares,
        num_decisions=len(run.decisions),
        provisioned=provisioned,
        mix_changes_per_step=per_step or None,
    )


@dataclass(frozen=True, slots=True)
class TargetCheck:
    trace: str
    target: str
    value: str
    met: bool
    primary: bool = True  # False: against an extra baseline, for context


def _versus(trace: str, s: PolicyResult, name: str, other: PolicyResult) -> list[TargetCheck]:
    """The comparative targets of sloserve against one baseline (by the baseline's kind)."""
    if name.startswith("ray-default"):  # one check over all settings near sloserve's cost (check_targets)
        return []
    if name == "static-compressed" or name.startswith("static:"):
        ratio = s.quality_loss / other.quality_loss if other.quality_loss > 0 else float("inf")
        value = f"{s.quality_loss:.4f} vs {other.quality_loss:.4f} (ratio {ratio:.2f}; {other.provisioned})"
        return [TargetCheck(trace, f"quality loss <= 1/3 of {name}'s", value,
                            s.quality_loss <= other.quality_loss / 3.0 + 1e-12, name == "static-compressed")]
    if name in ("static-full", "static-full-min"):
        fewer = 1.0 - s.replica_seconds / other.replica_seconds if other.replica_seconds else 0.0
        value = (f"{s.replica_seconds:.0f} vs {other.replica_seconds:.0f} replica-s ({fewer:.0%} fewer; "
                 f"{other.provisioned})")
        return [TargetCheck(trace, f">= 30% fewer replica-seconds than {name}", value,
                            s.replica_seconds <= 0.7 * other.replica_seconds, name == "static-full")]
    return []


def check_targets(trace: str, results: dict[str, PolicyResult]) -> list[TargetCheck]:
    """The issue's targets that apply to this trace (the simulator marks other traces informational)."""
    s = results.get("sloserve")
    if s is None:
        return []
    if trace in STEADY_TRACES:
        checks = [TargetCheck(trace, "<= 4 variant-mix changes per hour", f"{s.mix_changes_per_hour:.1f} per hour",
                              s.mix_changes_per_hour <= 4.0)]
        full = results.get("static-full")
        if full is not None and full.replica_seconds > 0:  # no replica kept warm for nothing under steady load
            ratio = s.replica_seconds / full.replica_seconds
            checks.append(TargetCheck(trace, f"<= {STEADY_COST_RATIO}x static-full's replica-seconds",
                                      f"{s.replica_seconds:.0f} vs {full.replica_seconds:.0f} replica-s ({ratio:.2f}x)",
                                      ratio <= STEADY_COST_RATIO + 1e-9))
        return checks
    checks = [TargetCheck(trace, "sloserve SLO attainment >= 99%", f"{s.attainment:.2%}", s.attainment >= 0.99)]
    if s.mix_changes_per_step:
        worst = max(max(up, back) for up, back in s.mix_changes_per_step)
        checks.append(TargetCheck(trace, f"each step: <= {MAX_CHANGES_PER_STEP} mix changes up and {MAX_CHANGES_PER_STEP} back",
                                  " ".join(f"{up}/{back}" for up, back in s.mix_changes_per_step),
                                  worst <= MAX_CHANGES_PER_STEP, trace == "step3x"))
    rays = {n: r for n, r in results.items() if n.startswith("ray-default")}
    if rays:
        near = {n: r for n, r in rays.items() if r.replica_seconds <= RAY_COST_RATIO * s.replica_seconds}
        value = ", ".join(f"{n}: {r.violations}" for n, r in near.items()) or "none at that cost"
        checks.append(TargetCheck(trace, f">= 5x fewer violations than every ray-default at <= {RAY_COST_RATIO}x "
                                  f"replica-s (sloserve {s.violations})", value,
                                  all(s.violations * 5 <= r.violations for r in near.values())))
    for name, other in results.items():
        checks += _versus(trace, s, name, other)
    return checks


def is_target_trace(trace: str) -> bool:
    return trace in (*TARGET_TRACES, *STEADY_TRACES)


def as_json(results: dict[str, PolicyResult]) -> dict[str, Any]:
    return {name: asdict(r) for name, r in results.items()}


def plot(path: Path, trace: RateTrace, runs: dict[str, SimRun], slo: SLOConfig) -> None:
    """Offered load and replicas, rolling SLO attainment per policy, and sloserve's traffic split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_slo, ax_mix) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    times = [t for t, _ in trace.segments] + [trace.duration_s]
    rates = [r for _, r in trace.segments] + [trace.segments[-1][1]]
    ax_load.step(times, rates, where="post", color="black", label="offered rps")
    ax_load.set_ylabel("requests/s")
    ax_rep = ax_load.twinx()
    bin_s = 30.0
    for name, run in runs.items():
        ax_rep.step([s.t_s for s in run.samples], [sum(s.replicas.values()) for s in run.samples],
                    where="post", label=name, alpha=0.8)
        bins: dict[int, list[bool]] = {}
        for out in run.outcomes:
            bins.setdefault(int(out.request.arrival_s // bin_s), []).append(attains(out, slo))
        keys = sorted(bins)
        ax_slo.plot([k * bin_s for k in keys], [sum(bins[k]) / len(bins[k]) for k in keys], label=name)
    ax_rep.set_ylabel("replicas")
    ax_rep.legend(loc="upper right", fontsize=8)
    ax_slo.set_ylabel(f"SLO attainment ({bin_s:.0f} s bins)")
    ax_slo.set_ylim(-0.02, 1.02)
    ax_slo.legend(loc="lower left", fontsize=8)
    ours = runs.get("sloserve")
    if ours is not None and ours.samples:
        names = sorted({n for s in ours.samples for n in s.weights})
        ax_mix.stackplot([s.t_s for s in ours.samples],
                         [[s.weights.get(n, 0.0) for s in ours.samples] for n in names], labels=names)
        ax_mix.legend(loc="upper right", fontsize=8)
    ax_mix.set_ylabel("sloserve traffic share")
    ax_mix.set_xlabel("time (s)")
    fig.suptitle(f"trace {trace.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

"""Replica targets per variant: scale up at once, scale down one replica at a time after a calm hold.

Up, when (a) the arrival rate (its confident lower bound) puts even the best split over the
targeted replicas (ready or starting) at risk (`degrade_at_ratio` of capacity), or over the
target utilization while the SLO is at risk now: add the fewest replicas that bring it back to
the target utilization, the better variant on a tie — or the best variant first once the quality budget is spent; (b) the best split over
the targeted replicas misses the quality floor, or the quality budget is spent while the split
still loses quality: add one replica of the best variant with room, once no replica is starting.
Down, never during a burst, at risk, or within `scale_down_hold_s` of a burst, degrade or scaling:
remove the one replica whose loss keeps the split's quality and leaves room at the target
utilization for the calm (upper) rate estimate. Always within per-variant bounds and the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deployments.slo.decision import PolicyState
from deployments.slo.plan import best_first, plan_for, replicas_to_cover
from deployments.slo.settings import VariantBounds
from deployments.slo.signals import Signals
from inference.schema.config.slo import ControllerConfig

EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ScaleStep:
    targets: dict[str, int]
    direction: int  # +1 up, -1 down, 0 none
    reason: str


def bounded_targets(state: PolicyState, variants: Sequence[VariantBounds], max_total: int) -> dict[str, int]:
    """The state's targets clamped to each variant's bounds, trimmed (worst first) to the budget."""
    targets = {
        v.name: min(max(state.replica_targets.get(v.name, v.num_replicas), v.min_replicas), v.max_replicas)
        for v in variants
    }
    for v in reversed(variants):
        while sum(targets.values()) > max_total and targets[v.name] > v.min_replicas:
            targets[v.name] -= 1
    return targets


def _with(targets: Mapping[str, int], name: str, delta: int) -> dict[str, int]:
    out = dict(targets)
    out[name] += delta
    return out


def scale_step(
    sig: Signals,
    state: PolicyState,
    controller: ControllerConfig,
    variants: Sequence[VariantBounds],
    at_risk: bool,
) -> ScaleStep:
    bounds = {v.name: (v.min_replicas, v.max_replicas) for v in variants}
    targets = bounded_targets(state, variants, controller.max_total_replicas)
    room = controller.max_total_replicas - sum(targets.values())
    starting = sum(max(0, targets[n] - sig.ready[n]) for n in targets)
    util, floor = controller.target_utilization, controller.quality_floor
    caps, rate = sig.caps, sig.rate_sure_rps
    quality, over_rps = plan_for(rate, targets, caps, util)
    _, over_risk_rps = plan_for(rate, targets, caps, controller.degrade_at_ratio)

    _, over_now_rps = plan_for(sig.rate_sure_rps, targets, caps, util)
    deficit = over_risk_rps > EPS or (at_risk and over_now_rps > EPS)
    if deficit and room > 0:  # (a) at risk whatever the split, or at risk now and over the target
        over_rps = max(over_rps, over_now_rps)
        options: list[tuple[tuple[bool, float, float], str, int]] = []
        for n in targets:
            free = min(room, bounds[n][1] - targets[n])
            if free <= 0 or not caps[n].meets_slo:
                continue
            k = min(free, replicas_to_cover(over_rps, caps[n], util))
            q, left = plan_for(rate, _with(targets, n, k), caps, util)
            key = (left > EPS, -q, k) if sig.budget_spent else (left > EPS, k, -q)
            options.append((key, n, k))
        if options:
            _, n, k = min(options)
            return ScaleStep(
                _with(targets, n, k),
                +1,
                f"{rate:.2f} rps is {over_rps:.2f} rps over the safe capacity of {targets}: +{k} {n} "
                f"(ready in ~{controller.replica_cold_start_s:.0f} s; ready variants bridge until then)",
            )

    short_of_floor = quality < floor - EPS
    spent = sig.budget_spent and 1.0 - quality > controller.quality_budget + EPS
    if (short_of_floor or spent) and room > 0 and starting == 0:  # (b) quality
        for n in best_first(list(targets), sig.quality):
            if targets[n] < bounds[n][1]:
                why = f"below the quality floor {floor}" if short_of_floor else "with the quality budget spent"
                return ScaleStep(
                    _with(targets, n, +1), +1, f"best split has quality {quality:.3f} {why}: +1 {n}"
                )

    calm_since = max(state.last_scale_up_s, state.last_scale_down_s, state.last_burst_s, state.last_degrade_s)
    if at_risk or sig.in_burst or starting or sig.now_s - calm_since < controller.scale_down_hold_s:
        return ScaleStep(targets, 0, "")
    calm_rate = max(sig.rate_calm_rps, sig.long_rate_rps)
    before, _ = plan_for(calm_rate, targets, caps, util)
    removable: list[tuple[tuple[float, float, str], str]] = []
    for n in targets:
        if targets[n] <= bounds[n][0]:
            continue
        after, left = plan_for(calm_rate, _with(targets, n, -1), caps, util)
        if left <= EPS and after >= before - 1e-6:
            removable.append(((-after, sig.quality[n], n), n))
    if not removable:
        return ScaleStep(targets, 0, "")
    _, n = min(removable)
    return ScaleStep(
        _with(targets, n, -1),
        -1,
        f"calm for {sig.now_s - calm_since:.0f} s at <= {calm_rate:.2f} rps: -1 {n} keeps quality {before:.3f}",
    )

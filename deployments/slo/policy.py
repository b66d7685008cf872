"""The SLO policy: which variants get how much traffic and how many replicas, with reasons.

`decide(observation, state, slo, manifest, controller, variants) -> (Decision, PolicyState)` is
pure and deterministic (time comes from the observation). Each call reads `Signals` (rates with
noise bounds, observed risk, capacities corrected online, quality budget), takes a replica step
(`scaling`), then moves traffic:
- degrade at once when the SLO is at risk — a variant's observed p95 at `degrade_at_ratio` of a
  target, or its share of the arrival rate surely above that ratio of its ready capacity — to the
  best-quality split that fits the replicas ready *now* (new replicas' cold start is bridged by
  running faster variants), never below the quality floor while capacity remains in the budget;
- restore one `restore_step` per decision toward the best split at `restore_utilization`, only
  after `restore_hold_s` without a degrade and with restoring safe at every decision of that hold;
  all the way in one move when the best variants alone carry the calm rate at `target_utilization`.
While a variant is at risk, traffic only moves off the variants at risk (more onto one of them is a
restore, which waits); requests running past a variant's SLO concurrency right after a degrade are
the ones it already had, and count as a risk again only after `recent_window_s`.
One step at a time: a restore or a scale-down is the only change of its decision (a scale-up
waits for no restore; a restore waits for no scale-down).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from deployments.slo.decision import Decision, PolicyState, ReasonCode
from deployments.slo.observation import Observation
from deployments.slo.plan import (
    Weights,
    blend_to_floor,
    capacity_rps,
    plan_weights,
    share_of,
    step_toward,
    total_variation,
    traffic_quality,
)
from deployments.slo.scaling import ScaleStep, bounded_targets, scale_step
from deployments.slo.settings import VariantBounds
from deployments.slo.signals import Signals, read_signals
from inference.schema.config.slo import ControllerConfig, SLOConfig
from inference.schema.manifest import VariantManifest

# A split change smaller than this share of traffic is noise: 0.02 where a variant's risk is seen
# (its latency, a backlog, no ready replica); 0.1 where it is only predicted from the rate. At 0.02
# each small re-plan on a noisy rate during a sustained step was one more mix change (step3x: 3-5
# changes up per step, simulated); the router's spilling over (routing.spill_over) takes what
# such a small move would have.
MIN_MOVE = 0.02
MIN_MOVE_PREDICTED = 0.1
MIN_RESTORE = 0.1  # a restore moves at least this share of traffic (or all that is left): each move is a change
QUALITY_EPS = 1e-3
RISK_BACKOFF = 0.85  # a variant seen at risk keeps at most this share of its current load


class PolicyError(ValueError):
    """The configured variants and the manifest do not match."""


def _current(state: PolicyState, names: list[str]) -> Weights:
    weights = {n: max(0.0, state.weights.get(n, 0.0)) for n in names}
    total = sum(weights.values())
    return {n: w / total for n, w in weights.items()} if total > 0 else {n: 1.0 / len(names) for n in names}


def _fmt(weights: Weights) -> str:
    return "{" + ", ".join(f"{n}: {w:.2f}" for n, w in sorted(weights.items()) if w > 0.005) + "}"


def _seen_at_risk(sig: Signals, state: PolicyState, current: Weights, controller: ControllerConfig) -> set[str]:
    """Variants carrying traffic whose observed p95 is at risk, trusted where the window has turned
    over since the last shift of traffic and the variant is loaded now (a backlog, or its share of
    the rate at `restore_utilization` of its capacity or more); a violation at light load is stale,
    or a slow replica that the online correction learns."""
    if sig.now_s - max(state.last_degrade_s, state.last_restore_s) < controller.window_s:
        return set()
    busy = capacity_rps(sig.ready, sig.caps, controller.restore_utilization)
    return {
        n
        for n, w in current.items()
        if w > 0
        and sig.risk[n] >= controller.degrade_at_ratio
        and (sig.queue_depth[n] + sig.excess[n] > 0 or w * sig.rate_plan_rps >= busy[n])
    }


def _at_risk(
    sig: Signals, state: PolicyState, current: Weights, seen: set[str], controller: ControllerConfig
) -> tuple[list[str], bool]:
    """Variants carrying traffic whose SLO is at risk: seen, or at risk with a backlog now, or
    running more requests than the SLO allows (once a degrade's requests have had `recent_window_s`
    to drain: those already running stay where they are), or predicted (their share of the
    surely-risen rate passes `degrade_at_ratio` of their ready replicas' capacity), or without a
    ready replica; and whether any of them is at risk by more than the prediction."""
    limit = capacity_rps(sig.ready, sig.caps, controller.degrade_at_ratio)
    draining = sig.now_s - state.last_degrade_s < controller.recent_window_s
    backlogged = {
        n
        for n in current
        if (sig.queue_depth[n] > 0 and sig.risk[n] >= controller.degrade_at_ratio)
        or (sig.excess[n] > 0 and not draining)
    }
    observed = {n for n in current if n in seen or n in backlogged or sig.ready[n] == 0}
    risky = [n for n, w in current.items() if w > 0 and (n in observed or w * sig.rate_rise_rps > limit[n] + 1e-9)]
    return risky, bool(observed & set(risky))


def _room(sig: Signals, utilization: float, drain_s: float) -> dict[str, float]:
    """Rate each variant's ready replicas take at `utilization`, less what drains its backlog
    (requests waiting for a batch slot, or running beyond the SLO's concurrency) within `drain_s`."""
    full = capacity_rps(sig.ready, sig.caps, utilization)
    return {n: max(0.0, full[n] - (sig.queue_depth[n] + sig.excess[n]) / drain_s) for n in full}


def _floor_applies(targets: dict[str, int], sig: Signals, controller: ControllerConfig) -> bool:
    """Capacity remains in the budget: room for more replicas, or replicas still starting."""
    starting = any(targets[n] > sig.ready[n] for n in targets)
    return sum(targets.values()) < controller.max_total_replicas or starting


def _move_traffic(
    sig: Signals,
    state: PolicyState,
    current: Weights,
    risky: list[str],
    seen: set[str],
    observed: bool,
    floor_applies: bool,
    controller: ControllerConfig,
) -> tuple[Weights, ReasonCode | None, str, float | None]:
    """(weights, traffic reason or None, text, calm_since_s)."""
    quality, floor = sig.quality, controller.quality_floor
    raw = capacity_rps(sig.ready, sig.caps)  # what ready replicas take at all: routable if > 0
    if risky:
        drain_s = controller.recent_window_s
        safe, room = _room(sig, controller.target_utilization, drain_s), _room(sig, 1.0, drain_s)
        for n in seen:  # seen at risk although the model may say it fits: believe the latency
            believed = current[n] * sig.rate_plan_rps * RISK_BACKOFF
            safe[n], room[n] = min(safe[n], believed), min(room[n], believed)
        plan = plan_weights(sig.rate_plan_rps, safe, {n: max(room[n], 1e-9 * raw[n]) for n in raw}, quality)
        if floor_applies:  # the floor, within what each variant carries safely
            plan = blend_to_floor(plan, quality, floor, share_of(safe, sig.rate_plan_rps))
        stranded = any(sig.ready[n] == 0 for n in risky)
        worse = traffic_quality(plan, quality) < traffic_quality(current, quality) - 1e-9
        relieves = any(plan.get(n, 0.0) < current[n] - 1e-9 for n in risky)  # else: a restore without the hold
        min_move = MIN_MOVE if observed else MIN_MOVE_PREDICTED
        if plan and (worse or relieves) and (total_variation(plan, current) >= min_move or stranded):
            what = ", ".join(f"{n} (risk {sig.risk[n]:.2f}, ready {sig.ready[n]})" for n in risky)
            text = f"SLO at risk on {what} at {sig.rate_plan_rps:.2f} rps: {_fmt(current)} -> {_fmt(plan)}"
            return plan, ("degrade" if worse else "rebalance"), text, None

    safe_restore = capacity_rps(sig.ready, sig.caps, controller.restore_utilization)
    target = plan_weights(sig.rate_calm_rps, safe_restore, raw, quality)
    if floor_applies and target:
        target = blend_to_floor(target, quality, floor, share_of(safe_restore, sig.rate_calm_rps))
    # All the way back in one move when the best variants carry the whole calm rate at the planned
    # utilization: the restore band and `restore_step` pace a partial way back under load; at rest
    # they left a sliver behind (0.12 of the traffic at 0.48 vs 0.41 rps) that took its own restore
    # minutes later, one more mix change for each blip.
    at_target = capacity_rps(sig.ready, sig.caps, controller.target_utilization)
    whole = plan_weights(sig.rate_calm_rps, at_target, raw, quality)
    best = max((quality[n] for n, r in raw.items() if r > 0), default=1.0)
    complete = bool(target) and bool(whole) and traffic_quality(whole, quality) >= best - QUALITY_EPS
    if complete:
        target = whole
    busiest = max((sig.risk[n] for n, w in current.items() if w > 0), default=0.0)
    calm = (
        not risky
        and bool(target)
        and busiest <= controller.restore_below_ratio
        and traffic_quality(target, quality) > traffic_quality(current, quality) + QUALITY_EPS
        and (total_variation(target, current) >= MIN_RESTORE or traffic_quality(target, quality) >= 1.0 - QUALITY_EPS)
    )
    if not calm:
        return current, None, "", None
    calm_since = state.calm_since_s if state.calm_since_s is not None else sig.now_s
    held = min(sig.now_s - calm_since, sig.now_s - max(state.last_degrade_s, state.last_restore_s))
    if held < controller.restore_hold_s:
        return current, None, "", calm_since
    moved = target if complete else step_toward(current, target, controller.restore_step)
    fits = f"all of it fitting at {controller.target_utilization:.0%} utilization" if complete else (
        f"room at {controller.restore_utilization:.0%} utilization")
    text = f"calm for {held:.0f} s at <= {sig.rate_calm_rps:.2f} rps with {fits}: {_fmt(current)} -> {_fmt(moved)}"
    return moved, "restore", text, calm_since


def decide(
    observation: Observation,
    state: PolicyState,
    slo: SLOConfig,
    manifest: VariantManifest,
    controller: ControllerConfig,
    variants: Sequence[VariantBounds],
) -> tuple[Decision, PolicyState]:
    """One control decision; see the module docstring."""
    names = [v.name for v in variants]
    missing = [n for n in names if n not in {e.name for e in manifest.variants}]
    if missing:
        raise PolicyError(f"variants {missing} are configured but not in the manifest ({manifest.base})")
    sig = read_signals(observation, state, slo, manifest, controller, variants)
    current = _current(state, names)
    seen = _seen_at_risk(sig, state, current, controller)
    risky, observed = _at_risk(sig, state, current, seen, controller)

    scale: ScaleStep = scale_step(sig, state, controller, variants, at_risk=bool(risky))
    floor_applies = _floor_applies(scale.targets, sig, controller)
    weights, traffic, text, calm_since = _move_traffic(sig, state, current, risky, seen, observed, floor_applies, controller)
    if traffic == "restore" and scale.direction > 0:  # one step at a time: capacity first
        weights, traffic, calm_since = current, None, state.calm_since_s
    elif traffic == "restore" and scale.direction < 0:  # ... but quality before savings
        scale = ScaleStep(bounded_targets(state, variants, controller.max_total_replicas), 0, "")

    code: ReasonCode
    if traffic in ("degrade", "rebalance") and scale.direction > 0:
        code = "degrade_scale_up" if traffic == "degrade" else "rebalance_scale_up"
        reason = f"{text}; {scale.reason}"
    elif traffic is not None:
        code, reason = traffic, text
    elif scale.direction:
        code, reason = ("scale_up" if scale.direction > 0 else "scale_down"), scale.reason
    else:
        code, reason = "hold", f"steady at {sig.rate_rps:.2f} rps: {_fmt(current)}, replicas {scale.targets}"

    now = sig.now_s
    new_state = replace(
        state,
        weights=weights,
        replica_targets=scale.targets,
        last_decision_s=now,
        last_degrade_s=now if traffic in ("degrade", "rebalance") else state.last_degrade_s,
        last_restore_s=now if traffic == "restore" else state.last_restore_s,
        last_scale_up_s=now if scale.direction > 0 else state.last_scale_up_s,
        last_scale_down_s=now if scale.direction < 0 else state.last_scale_down_s,
        last_burst_s=now if sig.in_burst or risky else state.last_burst_s,
        calm_since_s=calm_since,
        long_rate_rps=sig.long_rate_rps,
        corrections=sig.corrections,
        mean_output_tokens=sig.mean_output_tokens,
        output_samples=sig.output_samples,
        quality_debt_s=sig.quality_debt_s,
    )
    decision = Decision(
        at_s=now,
        weights=weights,
        replica_targets=scale.targets,
        reason_code=code,
        reason=reason,
        at_risk=bool(risky),
        expected_quality=traffic_quality(weights, sig.quality),
        weights_changed=total_variation(weights, current) > 1e-12,
        replicas_changed=scale.targets != dict(state.replica_targets),
    )
    return decision, new_state

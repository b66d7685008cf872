"""Traffic and replica arithmetic over variants: pure functions of rates, capacities and qualities.

Weights are dicts variant -> share of traffic summing to 1. `plan_weights` pours the arrival rate
into variants best quality first, each up to its safe capacity — with each variant's capacity its
own, that greedy split is the one of highest traffic-weighted quality — and spreads any excess by
spare raw capacity. `blend_to_floor` moves traffic to better variants, within their capacity,
until the split meets the quality floor; `step_toward` moves weights by at most one step (total-variation distance).
`plan_for` evaluates a replica vector: the quality and unserved rate of its best plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from deployments.slo.capacity import ReplicaCapacity

Weights = dict[str, float]


def traffic_quality(weights: Mapping[str, float], quality: Mapping[str, float]) -> float:
    """Traffic-weighted quality (agreement with the full model) of a split."""
    return sum(share * quality[name] for name, share in weights.items())


def total_variation(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Share of traffic that moves between two splits."""
    return 0.5 * sum(abs(a.get(n, 0.0) - b.get(n, 0.0)) for n in set(a) | set(b))


def best_first(names: list[str] | set[str], quality: Mapping[str, float]) -> list[str]:
    return sorted(names, key=lambda n: (-quality[n], n))


def plan_weights(
    rate_rps: float,
    safe_rps: Mapping[str, float],
    raw_rps: Mapping[str, float],
    quality: Mapping[str, float],
) -> Weights:
    """Best-quality split of `rate_rps` over variants that can serve (raw_rps > 0); {} if none can."""
    names = best_first([n for n, r in raw_rps.items() if r > 0], quality)
    if not names:
        return {}
    weights = {n: 0.0 for n in raw_rps}
    if rate_rps <= 0:
        weights[names[0]] = 1.0
        return weights
    left_rps = rate_rps
    for n in names:
        take = min(left_rps, safe_rps[n])
        weights[n] = take
        left_rps -= take
    if left_rps > 1e-12:  # over capacity everywhere: spread the excess by spare raw capacity
        spare = {n: max(0.0, raw_rps[n] - weights[n]) for n in names}
        total = sum(spare.values())
        for n in names:
            weights[n] += left_rps * (spare[n] / total if total > 0 else 1.0 / len(names))
    return {n: w / rate_rps for n, w in weights.items()}


def blend_to_floor(
    weights: Mapping[str, float], quality: Mapping[str, float], floor: float, room_share: Mapping[str, float]
) -> Weights:
    """Move traffic from worse to better variants, best receiver and worst donor first, until the
    split reaches `floor` — but no variant beyond `room_share` (the share of traffic it carries
    under the SLO; 0: it cannot serve). The floor never overloads the best variant: what it cannot
    reach within capacity is the replica planner's to buy (a slow variant pushed past its capacity
    misses the SLO for every request it runs, not just the extra ones)."""
    out = dict(weights)
    current = traffic_quality(out, quality)
    receivers = best_first([n for n in out if room_share.get(n, 0.0) > out[n]], quality)
    for r in receivers:
        for d in sorted(out, key=lambda n: (quality[n], n)):
            if current >= floor - 1e-12:
                return out
            gain = quality[r] - quality[d]
            if gain <= 0 or out[d] <= 0:
                continue
            move = min((floor - current) / gain, out[d], room_share[r] - out[r])
            out[d] -= move
            out[r] += move
            current += move * gain
    return out


def share_of(capacity_rps: Mapping[str, float], rate_rps: float) -> dict[str, float]:
    """The share of `rate_rps` each capacity carries (unbounded at no load)."""
    return {n: (c / rate_rps if rate_rps > 0 else (math.inf if c > 0 else 0.0)) for n, c in capacity_rps.items()}


def step_toward(current: Mapping[str, float], target: Mapping[str, float], max_step: float) -> Weights:
    """Move from `current` toward `target` by at most `max_step` of traffic."""
    moved = total_variation(current, target)
    if moved <= max_step:
        return dict(target)
    keep = 1.0 - max_step / moved
    names = set(current) | set(target)
    return {n: keep * current.get(n, 0.0) + (1.0 - keep) * target.get(n, 0.0) for n in names}


def capacity_rps(
    replicas: Mapping[str, int], caps: Mapping[str, ReplicaCapacity], utilization: float = 1.0
) -> dict[str, float]:
    return {n: caps[n].rps * max(0, replicas.get(n, 0)) * utilization for n in caps}


def plan_for(
    rate_rps: float,
    replicas: Mapping[str, int],
    caps: Mapping[str, ReplicaCapacity],
    utilization: float,
    floor: float | None = None,
) -> tuple[float, float]:
    """(traffic-weighted quality, rate beyond safe capacity) of the best split over `replicas`."""
    safe = capacity_rps(replicas, caps, utilization)
    quality = {n: c.quality for n, c in caps.items()}
    raw = capacity_rps(replicas, caps)
    weights = plan_weights(rate_rps, safe, raw, quality)
    if not weights:
        return 0.0, rate_rps
    if floor is not None:
        weights = blend_to_floor(weights, quality, floor, share_of(safe, rate_rps))
    over_rps = sum(max(0.0, weights[n] * rate_rps - safe[n]) for n in weights)
    return traffic_quality(weights, quality), over_rps


def replicas_to_cover(deficit_rps: float, cap: ReplicaCapacity, utilization: float) -> int:
    """Replicas of one variant that add `deficit_rps` of safe capacity."""
    per_replica = cap.rps * utilization
    return max(1, math.ceil(deficit_rps / per_replica - 1e-9)) if per_replica > 0 else 1

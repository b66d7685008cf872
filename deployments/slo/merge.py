"""Observations from several router replicas as one, for the SLO policy.

Each router replica keeps its own latency windows over the requests it admitted. The controller
asks every replica (`DeploymentHandle.broadcast("observe")`) and merges: arrival and completion
rates and request counts add up; a percentile becomes the largest of the replicas' (an upper
bound of the pooled one: at most 5% of each part lies above its own p95, so at most 5% of the
pool lies above the largest); means are weighted by requests; replica load (queue, running) is
the largest any router saw, since they all see the same replicas. Pure: no Ray, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

from deployments.slo.observation import LatencyStats, Observation, VariantLoad, VariantObservation

_COUNTS = ("num_requests", "num_errors")
_MEANS = ("e2e_mean_s", "mean_prompt_tokens", "mean_output_tokens")


def merge_latency(parts: Sequence[LatencyStats]) -> LatencyStats:
    """Counts summed, percentiles the largest, means weighted by requests."""
    values: dict[str, float | int | None] = {name: sum(getattr(p, name) for p in parts) for name in _COUNTS}
    for f in fields(LatencyStats):
        if f.name in _COUNTS:
            continue
        given = [(getattr(p, f.name), p.num_requests) for p in parts if getattr(p, f.name) is not None]
        if not given:
            values[f.name] = None
        elif f.name in _MEANS:
            weight = sum(n for _, n in given)
            values[f.name] = sum(v * n for v, n in given) / weight if weight else max(v for v, _ in given)
        else:
            values[f.name] = max(v for v, _ in given)
    return LatencyStats(**values)  # type: ignore[arg-type]


def _merge_replicas(parts: Sequence[VariantLoad]) -> VariantLoad:
    return VariantLoad(
        num_replicas_running=max(p.num_replicas_running for p in parts),
        num_replicas_ready=max(p.num_replicas_ready for p in parts),
        queue_depth=max(p.queue_depth for p in parts),
        num_ongoing=max(p.num_ongoing for p in parts),
    )


def _merge_variant(name: str, parts: Sequence[VariantObservation]) -> VariantObservation:
    classes = sorted({c for p in parts for c in p.by_class})
    return VariantObservation(
        name=name,
        latency=merge_latency([p.latency for p in parts]),
        by_class={c: merge_latency([p.by_class[c] for p in parts if c in p.by_class]) for c in classes},
        arrival_rate_rps=sum(p.arrival_rate_rps for p in parts),
        recent_arrival_rate_rps=sum(p.recent_arrival_rate_rps for p in parts),
        completion_rate_rps=sum(p.completion_rate_rps for p in parts),
        replicas=_merge_replicas([p.replicas for p in parts]),
    )


def merge_observations(parts: Sequence[Observation], now_s: float) -> Observation:
    """One observation at `now_s` (the controller's clock: router replicas' clocks may differ)."""
    if not parts:
        raise ValueError("no observation to merge")
    if len(parts) == 1:
        return replace(parts[0], now_s=now_s)
    names = sorted({n for p in parts for n in p.variants})
    variants = {n: _merge_variant(n, [p.variants[n] for p in parts if n in p.variants]) for n in names}
    return Observation(now_s, parts[0].window_s, parts[0].recent_window_s, variants)

"""The SLO policy's output and memory: `Decision` and `PolicyState`, both immutable.

A `Decision` carries the traffic weights per variant, the replica target per variant, a
human-readable `reason` and a short `reason_code` (the label of
`sloserve_controller_decisions_total{reason}`). `PolicyState` is everything the policy remembers
between decisions (timers of the last degrade/restore/scaling, the long-run arrival rate, the
online latency corrections, the mean output length, the quality-budget bucket); `decide` takes one and returns the next.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from deployments.slo.capacity import Correction
from deployments.slo.settings import VariantBounds

ReasonCode = Literal[
    "hold",  # nothing to change
    "degrade",  # SLO at risk: traffic moved to faster variants at once
    "rebalance",  # traffic moved off variants that cannot serve it (no ready replica, overload)
    "restore",  # calm for the hold time with headroom: one step back toward better variants
    "scale_up",  # replicas added (capacity deficit, quality floor or spent quality budget)
    "scale_down",  # one replica removed after a calm hold
    "degrade_scale_up",
    "rebalance_scale_up",
]
REASON_CODES: tuple[str, ...] = ReasonCode.__args__  # type: ignore[attr-defined]
NEVER = -math.inf


@dataclass(frozen=True, slots=True)
class Decision:
    """What the controller applies: router weights and replica targets, and why."""

    at_s: float
    weights: Mapping[str, float]
    replica_targets: Mapping[str, int]
    reason_code: ReasonCode
    reason: str
    at_risk: bool = False
    expected_quality: float = 1.0  # traffic-weighted agreement of `weights`
    weights_changed: bool = False
    replicas_changed: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights"] = dict(self.weights)
        out["replica_targets"] = dict(self.replica_targets)
        return out


@dataclass(frozen=True, slots=True)
class PolicyState:
    """The policy's memory between decisions (times in the observation's clock, seconds)."""

    weights: Mapping[str, float]
    replica_targets: Mapping[str, int]
    last_decision_s: float | None = None
    last_degrade_s: float = NEVER
    last_restore_s: float = NEVER
    last_scale_up_s: float = NEVER
    last_scale_down_s: float = NEVER
    last_burst_s: float = NEVER
    calm_since_s: float | None = None  # restoring has been safe at every decision since then
    long_rate_rps: float | None = None  # arrival rate averaged over scale_down_hold_s
    corrections: Mapping[str, Correction] = field(default_factory=dict)  # observed / manifest latency
    mean_output_tokens: float | None = None  # averaged over several windows
    output_samples: float = 0.0  # the requests mean_output_tokens rests on (forgetting included)
    quality_debt_s: float = 0.0  # leaky bucket of quality loss x seconds, drained at the budget rate

    @classmethod
    def initial(cls, variants: Sequence[VariantBounds]) -> PolicyState:
        """Start from the configured weights (normalized) and replica counts."""
        total = sum(v.weight for v in variants)
        if total <= 0:
            raise ValueError("at least one variant needs weight > 0")
        return cls(
            weights={v.name: v.weight / total for v in variants},
            replica_targets={v.name: v.num_replicas for v in variants},
        )

    def learned(self) -> dict[str, Any]:
        """What the policy has learned that a restarted controller should not relearn from nothing
        (the routers keep it): the long-run rate, the mean output length, the latency corrections
        and the quality-budget bucket. No timers: they are in this process's monotonic clock."""
        return {
            "long_rate_rps": self.long_rate_rps,
            "mean_output_tokens": self.mean_output_tokens,
            "output_samples": self.output_samples,
            "quality_debt_s": self.quality_debt_s,
            "corrections": {n: [c.tpot, c.ttft] for n, c in self.corrections.items()},
        }

    def with_learned(self, learned: Mapping[str, Any] | None) -> PolicyState:
        """This state carrying an earlier state's `learned()`; a missing, non-finite or negative
        value keeps this state's own (a router of another version may hand over anything)."""
        if not learned:
            return self

        def finite(value: Any, low: float) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= low

        def number(key: str, current: float | None) -> float | None:
            value: Any = learned.get(key)
            return float(value) if finite(value, 0.0) else current

        corrections = dict(self.corrections)
        for name, pair in (learned.get("corrections") or {}).items():
            ok = name in self.weights and isinstance(pair, list | tuple) and len(pair) == 2
            if ok and all(finite(x, 1e-9) for x in pair):
                corrections[name] = Correction(tpot=float(pair[0]), ttft=float(pair[1]))
        return replace(
            self,
            long_rate_rps=number("long_rate_rps", self.long_rate_rps),
            mean_output_tokens=number("mean_output_tokens", self.mean_output_tokens),
            output_samples=number("output_samples", self.output_samples) or 0.0,
            quality_debt_s=number("quality_debt_s", self.quality_debt_s) or 0.0,
            corrections=corrections,
        )

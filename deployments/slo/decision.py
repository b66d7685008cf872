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
from dataclasses import asdict, dataclass, field
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

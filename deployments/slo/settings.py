"""The policy's own view of the configuration: SLO targets, controller settings, variant bounds.

The pure policy reads only these frozen dataclasses, never the pydantic `AppConfig`, so it can be
driven by the Ray-facing controller, the simulator and the tests alike. `PolicyInputs.of(config)`
copies the fields it needs from any object shaped like `AppConfig` (its `slo`, `controller` and
`variants` sections); the values were validated there (bounds, hysteresis bands), once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self


def _copy(cls: type[Any], source: object) -> Any:
    return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class ClassTarget:
    """p95 latency targets of one request class, milliseconds; None: not checked."""

    ttft_p95_ms: float | None = None
    tpot_p95_ms: float | None = None
    e2e_p95_ms: float | None = None


@dataclass(frozen=True, slots=True)
class SLOTargets:
    """Targets per request class; requests of an unknown class are held to `default_class`'s."""

    classes: Mapping[str, ClassTarget]
    default_class: str

    @classmethod
    def of(cls, slo: Any) -> Self:
        return cls({name: _copy(ClassTarget, t) for name, t in slo.classes.items()}, slo.default_class)

    def target(self, slo_class: str) -> ClassTarget:
        return self.classes.get(slo_class) or self.classes[self.default_class]


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """How often and how cautiously the policy acts. No defaults: `of(ControllerConfig)` is the one
    source of the values (their defaults, bounds and meanings live there)."""

    interval_s: float
    window_s: float
    restore_hold_s: float
    quality_floor: float
    max_total_replicas: int
    recent_window_s: float
    min_samples: int
    target_utilization: float
    restore_utilization: float
    degrade_at_ratio: float
    restore_below_ratio: float
    restore_step: float
    scale_down_hold_s: float
    replica_cold_start_s: float
    burst_ratio: float
    quality_budget: float
    quality_budget_window_s: float

    @classmethod
    def of(cls, controller: Any) -> Self:
        return _copy(cls, controller)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class VariantBounds:
    """One variant as the policy plans it: initial weight and replicas, bounds, batch size."""

    name: str
    weight: float = 1.0
    num_replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    max_num_seqs: int = 32

    @classmethod
    def of(cls, variant: Any) -> Self:
        return cls(
            variant.name, variant.weight, variant.num_replicas, variant.min_replicas, variant.max_replicas,
            variant.engine.max_num_seqs,
        )


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    """Everything configured that `decide` reads besides the observation, the state and the manifest."""

    slo: SLOTargets
    controller: ControllerSettings
    variants: tuple[VariantBounds, ...]

    @classmethod
    def of(cls, config: Any) -> Self:
        return cls(
            SLOTargets.of(config.slo),
            ControllerSettings.of(config.controller),
            tuple(VariantBounds.of(v) for v in config.variants),
        )

"""What the policy reads of the configuration: SLO targets, controller settings, variant bounds.

The SLO targets and controller settings are the app config's own `SLOConfig` and
`ControllerConfig` (schema layer: defaults, bounds and hysteresis bands validated there, once).
A variant is flattened to the `VariantBounds` the policy plans with, which tests and the
simulator can build without a full `VariantConfig`. `PolicyInputs.of(config)` gathers all three
from an `AppConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from inference.schema.config import AppConfig, ControllerConfig, SLOConfig, VariantConfig


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
    def of(cls, variant: VariantConfig) -> Self:
        return cls(
            variant.name, variant.weight, variant.num_replicas, variant.min_replicas, variant.max_replicas,
            variant.engine.max_num_seqs,
        )


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    """Everything configured that `decide` reads besides the observation, the state and the manifest."""

    slo: SLOConfig
    controller: ControllerConfig
    variants: tuple[VariantBounds, ...]

    @classmethod
    def of(cls, config: AppConfig) -> Self:
        return cls(
            config.slo,
            config.controller,
            tuple(VariantBounds.of(v) for v in config.variants),
        )

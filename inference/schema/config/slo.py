"""The SLO sections: latency targets per request class and the controller's settings."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field, model_validator

from inference.schema.config.base import StrictModel


class SLOTarget(StrictModel):
    """Latency targets (p95) of one request class; unset targets are not checked."""

    ttft_p95_ms: float | None = Field(default=None, gt=0.0, le=3_600_000.0)
    tpot_p95_ms: float | None = Field(default=None, gt=0.0, le=600_000.0)
    e2e_p95_ms: float | None = Field(default=None, gt=0.0, le=86_400_000.0)

    @model_validator(mode="after")
    def _at_least_one(self) -> SLOTarget:
        if self.ttft_p95_ms is None and self.tpot_p95_ms is None and self.e2e_p95_ms is None:
            raise ValueError("an SLO class needs at least one of ttft_p95_ms, tpot_p95_ms, e2e_p95_ms")
        return self

    @classmethod
    def strictest(cls, targets: Iterable[SLOTarget]) -> SLOTarget:
        """The least of each target over some (at least one) classes; unset where none sets it."""
        targets = list(targets)

        def least(values: list[float | None]) -> float | None:
            given = [v for v in values if v is not None]
            return min(given) if given else None

        return cls(
            ttft_p95_ms=least([t.ttft_p95_ms for t in targets]),
            tpot_p95_ms=least([t.tpot_p95_ms for t in targets]),
            e2e_p95_ms=least([t.e2e_p95_ms for t in targets]),
        )


class SLOConfig(StrictModel):
    """Latency SLO per request class; the class comes from a header, else the default."""

    classes: dict[str, SLOTarget] = Field(
        default_factory=lambda: {
            "interactive": SLOTarget(ttft_p95_ms=1000.0, tpot_p95_ms=150.0),
            "batch": SLOTarget(e2e_p95_ms=60_000.0),
        }
    )
    default_class: str = Field(default="interactive")
    class_header: str = Field(default="x-sloserve-slo-class", pattern=r"^[a-z0-9-]+$")

    @model_validator(mode="after")
    def _default_exists(self) -> SLOConfig:
        if self.default_class not in self.classes:
            raise ValueError(
                f"default_class {self.default_class!r} is not one of the classes {sorted(self.classes)}"
            )
        return self

    def target(self, slo_class: str) -> SLOTarget:
        """The targets of `slo_class`; requests of an unknown class are held to `default_class`'s."""
        return self.classes.get(slo_class) or self.classes[self.default_class]


class ControllerConfig(StrictModel):
    """The SLO controller: how often it decides and how cautiously."""

    enabled: bool = Field(default=False, description="Run the SLOController deployment.")
    manifest: str | None = Field(default=None, description="Path of variants.json (measured variants).")
    interval_s: float = Field(default=5.0, gt=0.0, le=3600.0, description="Seconds between decisions.")
    window_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Latency window the policy reads.")
    restore_hold_s: float = Field(default=60.0, ge=0.0, le=86400.0, description="Calm time before restoring.")
    quality_floor: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Least traffic-weighted quality (agreement) vs full."
    )
    max_total_replicas: int = Field(default=4, ge=1, le=4096, description="Replica budget over all variants.")
    recent_window_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="Short window of arrivals that detects bursts and steps."
    )
    min_samples: int = Field(
        default=20, ge=1, le=100_000, description="Finished requests a variant needs before its percentiles count."
    )
    target_utilization: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Planned load as a share of a replica's capacity under the SLO."
    )
    restore_utilization: float = Field(
        default=0.65,
        gt=0.0,
        le=1.0,
        description="Restore quality only if the restored mix fits at this share of capacity (hysteresis band).",
    )
    degrade_at_ratio: float = Field(
        default=0.9,
        gt=0.0,
        le=10.0,
        description="Observed p95 / target, or predicted load / capacity, at which the SLO is at risk (degrade).",
    )
    restore_below_ratio: float = Field(
        default=0.6, gt=0.0, le=10.0, description="Observed p95 / target under which restoring is allowed."
    )
    restore_step: float = Field(
        default=0.25, gt=0.0, le=1.0, description="Most traffic share moved back to better variants per decision."
    )
    scale_down_hold_s: float = Field(
        default=300.0, ge=0.0, le=86400.0, description="Calm time after a burst or scaling before removing a replica."
    )
    replica_cold_start_s: float = Field(
        default=30.0, ge=0.0, le=86400.0, description="Expected time from adding a replica to it serving."
    )
    burst_ratio: float = Field(
        default=1.5, ge=1.0, le=100.0, description="Recent / long-run arrival rate above which load is a burst."
    )
    quality_budget: float = Field(
        default=0.02, ge=0.0, le=1.0, description="Mean quality loss vs full allowed over quality_budget_window_s."
    )
    quality_budget_window_s: float = Field(
        default=3600.0, gt=0.0, le=7 * 86400.0, description="Horizon of the quality budget (a leaky bucket)."
    )

    @model_validator(mode="after")
    def _hysteresis_bands(self) -> ControllerConfig:
        if self.target_utilization >= self.degrade_at_ratio:
            raise ValueError(
                f"target_utilization ({self.target_utilization}) must be below "
                f"degrade_at_ratio ({self.degrade_at_ratio}), or every plan would be at risk"
            )
        if self.restore_utilization >= self.target_utilization:
            raise ValueError(
                f"restore_utilization ({self.restore_utilization}) must be below "
                f"target_utilization ({self.target_utilization})"
            )
        if self.restore_below_ratio >= self.degrade_at_ratio:
            raise ValueError(
                f"restore_below_ratio ({self.restore_below_ratio}) must be below "
                f"degrade_at_ratio ({self.degrade_at_ratio})"
            )
        if self.recent_window_s > self.window_s:
            raise ValueError(f"recent_window_s ({self.recent_window_s}) must be <= window_s ({self.window_s})")
        return self

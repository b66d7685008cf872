"""The policies the simulator compares, behind one small interface (`SimPolicy`).

- `sloserve`: the real pure policy (`deployments.slo.policy.decide`) on the simulated windows.
- `ray-default`: Ray Serve's default autoscaler on the full variant, re-implemented from Ray 2.60
  (`ray/serve/autoscaling_policy.py`: `replica_queue_length_autoscaling_policy`,
  `_apply_scaling_factors`, `_apply_delay_logic`; defaults from `ray/serve/config.py`
  `AutoscalingConfig`): desired = mean over `look_back_period_s` of ongoing requests (running +
  queued) / `target_ongoing_requests` (default 2); acted on once the wish held
  `upscale_delay_s` (30 s) or `downscale_delay_s` (600 s); clamped to the replica bounds.
- `static`: fixed replicas and weights (static-full, static-compressed, each provisioned by the
  simulator for the trace's peak).
- `threshold`: a ladder of variants, best first, one replica each; all traffic on one rung; one
  rung down when an observed p95 passes 80% of its target, one up under 40%, then a window's wait.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from deployments.slo.decision import PolicyState
from deployments.slo.observation import Observation
from deployments.slo.policy import decide
from deployments.slo.settings import PolicyInputs
from deployments.slo.signals import observed_risk
from inference.schema.config import AppConfig
from inference.schema.manifest import VariantManifest


@dataclass(frozen=True, slots=True)
class Control:
    weights: dict[str, float]
    targets: dict[str, int]
    reason_code: str = "hold"
    reason: str = ""


class SimPolicy(Protocol):
    name: str
    interval_s: float

    def start(self) -> Control: ...

    def control(self, obs: Observation) -> Control: ...


@dataclass
class SloservePolicy:
    config: AppConfig
    manifest: VariantManifest
    name: str = "sloserve"
    state: PolicyState = field(init=False)
    inputs: PolicyInputs = field(init=False)

    def __post_init__(self) -> None:
        self.interval_s = self.config.controller.interval_s
        self.inputs = PolicyInputs.of(self.config)
        self.state = PolicyState.initial(self.inputs.variants)

    def start(self) -> Control:
        return Control(dict(self.state.weights), dict(self.state.replica_targets))

    def control(self, obs: Observation) -> Control:
        cfg = self.inputs
        decision, self.state = decide(obs, self.state, cfg.slo, self.manifest, cfg.controller, cfg.variants)
        return Control(
            dict(decision.weights), dict(decision.replica_targets), decision.reason_code, decision.reason
        )


@dataclass
class StaticPolicy:
    name: str
    weights: dict[str, float]
    targets: dict[str, int]
    interval_s: float = 60.0

    def start(self) -> Control:
        return Control(dict(self.weights), dict(self.targets))

    def control(self, obs: Observation) -> Control:
        return self.start()


@dataclass
class RayDefaultPolicy:
    """Ray Serve's default (request-based) autoscaler on one variant; see the module docstring."""

    variant: str
    min_replicas: int
    max_replicas: int
    initial_replicas: int
    target_ongoing_requests: float = 2.0  # AutoscalingConfig default (DEFAULT_TARGET_ONGOING_REQUESTS)
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0
    name: str = "ray-default"
    interval_s: float = 1.0  # Serve's loop runs every 0.1 s; delays are wall-clock, so 1 s is close
    _samples: deque[tuple[float, float]] = field(default_factory=deque)
    _target: int = 0
    _wish_since_s: float | None = None
    _wish_direction: int = 0

    def start(self) -> Control:
        self._target = self.initial_replicas
        return Control({self.variant: 1.0}, {self.variant: self._target})

    def control(self, obs: Observation) -> Control:
        now, stats = obs.now_s, obs.variant(self.variant).replicas
        self._samples.append((now, float(stats.num_ongoing + stats.queue_depth)))
        while self._samples and self._samples[0][0] < now - self.look_back_period_s:
            self._samples.popleft()
        total = sum(v for _, v in self._samples) / len(self._samples)  # aggregation_function MEAN
        running = stats.num_replicas_ready
        if running == 0:  # cold-start fast path: scale from zero at once
            desired = max(self._target, 1 if total > 0 else 0)
        else:
            wanted = running * total / (self.target_ongoing_requests * running)
            desired = math.ceil(wanted)  # scaling factor 1: ceil(current + 1 * (wanted - current))
        desired = self._delayed(min(max(desired, self.min_replicas), self.max_replicas), now)
        reason = "hold"
        if desired != self._target:
            reason = "scale_up" if desired > self._target else "scale_down"
            self._target = desired
        return Control({self.variant: 1.0}, {self.variant: self._target}, reason, f"ongoing {total:.1f}")

    def _delayed(self, desired: int, now: float) -> int:
        direction = (desired > self._target) - (desired < self._target)
        if direction == 0:
            self._wish_since_s, self._wish_direction = None, 0
            return self._target
        if direction != self._wish_direction or self._wish_since_s is None:
            self._wish_since_s, self._wish_direction = now, direction
        delay_s = self.upscale_delay_s if direction > 0 else self.downscale_delay_s
        if now - self._wish_since_s + 1e-6 >= delay_s:
            self._wish_since_s, self._wish_direction = None, 0
            return desired
        return self._target


@dataclass
class ThresholdPolicy:
    config: AppConfig
    ladder: Sequence[str]  # best quality first
    high_ratio: float = 0.8
    low_ratio: float = 0.4
    name: str = "threshold"
    interval_s: float = 5.0
    _rung: int = 0
    _last_switch_s: float = -math.inf

    def _control(self, reason: str = "hold", text: str = "") -> Control:
        weights = {n: float(i == self._rung) for i, n in enumerate(self.ladder)}
        return Control(weights, {n: 1 for n in self.ladder}, reason, text)

    def start(self) -> Control:
        return self._control()

    def control(self, obs: Observation) -> Control:
        if obs.now_s - self._last_switch_s < self.config.controller.window_s:
            return self._control()
        variant = obs.variant(self.ladder[self._rung])
        ratio = observed_risk(variant, self.config.slo, self.config.controller.min_samples)
        if ratio >= self.high_ratio and self._rung + 1 < len(self.ladder):
            self._rung, self._last_switch_s = self._rung + 1, obs.now_s
            return self._control("degrade", f"p95 at {ratio:.2f} of target")
        if 0 < ratio <= self.low_ratio and self._rung > 0:
            self._rung, self._last_switch_s = self._rung - 1, obs.now_s
            return self._control("restore", f"p95 at {ratio:.2f} of target")
        return self._control()

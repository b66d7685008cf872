"""What the SLO controller sees: typed records of finished requests and snapshots of the windows.

`RequestRecord` is what the router hands over when a request ends; `VariantLoad` is what it
knows about a variant's replicas; `Observation` (per variant: `VariantObservation` with
`LatencyStats` overall and per SLO class) is what `LatencyWindows.snapshot` returns and
`slo.policy.decide` reads. Plain frozen dataclasses: no Ray, no torch, cheap to build in tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

LatencyMetric = Literal["ttft", "tpot", "e2e"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished (or failed) request. Latencies in seconds; `ttft_s`/`tpot_s` None when unknown."""

    variant: str
    slo_class: str
    arrival_s: float
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0

    @property
    def end_s(self) -> float:
        return self.arrival_s + self.e2e_s


@dataclass(frozen=True, slots=True)
class VariantLoad:
    """A variant's replicas as the router sees them right now."""

    num_replicas_running: int = 0  # started (ready or still starting), not draining
    num_replicas_ready: int = 0  # serving
    queue_depth: int = 0  # requests waiting for a batch slot
    num_ongoing: int = 0  # requests in a batch


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Percentiles and means over the finished requests of one window (one variant, maybe one class)."""

    num_requests: int = 0
    num_errors: int = 0
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p95_s: float | None = None
    tpot_p99_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p95_s: float | None = None
    e2e_p99_s: float | None = None
    e2e_mean_s: float | None = None
    mean_prompt_tokens: float | None = None
    mean_output_tokens: float | None = None

    @property
    def error_rate(self) -> float:
        return self.num_errors / self.num_requests if self.num_requests else 0.0

    def p95_s(self, metric: LatencyMetric) -> float | None:
        return {"ttft": self.ttft_p95_s, "tpot": self.tpot_p95_s, "e2e": self.e2e_p95_s}[metric]


@dataclass(frozen=True, slots=True)
class VariantObservation:
    """One variant over the window: latency (overall and per SLO class), rates and replicas."""

    name: str
    latency: LatencyStats = field(default_factory=LatencyStats)
    by_class: Mapping[str, LatencyStats] = field(default_factory=dict)
    arrival_rate_rps: float = 0.0  # over window_s
    recent_arrival_rate_rps: float = 0.0  # over recent_window_s
    completion_rate_rps: float = 0.0
    replicas: VariantLoad = field(default_factory=VariantLoad)


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything the policy reads at time `now_s`."""

    now_s: float
    window_s: float
    recent_window_s: float
    variants: Mapping[str, VariantObservation]

    @property
    def arrival_rate_rps(self) -> float:
        return sum(v.arrival_rate_rps for v in self.variants.values())

    @property
    def recent_arrival_rate_rps(self) -> float:
        return sum(v.recent_arrival_rate_rps for v in self.variants.values())

    def variant(self, name: str) -> VariantObservation:
        return self.variants.get(name) or VariantObservation(name=name)

    def mean_tokens(self) -> tuple[float | None, float | None]:
        """(prompt, output) token means over all variants, weighted by finished requests."""
        means: list[float | None] = []
        for attr in ("mean_prompt_tokens", "mean_output_tokens"):
            pairs = [
                (getattr(v.latency, attr), v.latency.num_requests)
                for v in self.variants.values()
                if getattr(v.latency, attr) is not None and v.latency.num_requests
            ]
            total = sum(n for _, n in pairs)
            means.append(sum(m * n for m, n in pairs) / total if total else None)
        return means[0], means[1]

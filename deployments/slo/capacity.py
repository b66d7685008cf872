"""What one replica of each variant sustains under the latency SLO, from the manifest's speed profile.

`SpeedCurve` interpolates a variant's measured time per output token (TPOT) and time to first
token (TTFT) at any concurrency: linear between measured levels; past the last one throughput
stays flat and TTFT grows with TPOT (given only a batch-1 TTFT, it scales with TPOT throughout).
`replica_capacity` finds the largest concurrency whose predicted latencies, times a p95/p50 tail
factor, meet the strictest SLO targets, and turns it into the requests per second a replica
sustains (Little's law). A `Correction` (observed / predicted TPOT and TTFT, learned online by
the policy) scales the curve: that is how the manifest is corrected from observed latency. The
simulator uses the same curves as its ground truth. Pure: no Ray, no torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deployments.slo.settings import VariantBounds
from inference.schema.config.slo import SLOConfig, SLOTarget
from inference.schema.manifest import SpeedProfile, VariantManifest

TAIL_P95_OVER_P50 = 1.25  # p95 of a latency over the manifest's median, at steady concurrency
DEFAULT_OUTPUT_TOKENS = 128.0


def _interpolate(points: tuple[tuple[float, float], ...], c: float) -> float:
    """Linear between ascending (concurrency, value) points; c is within their range."""
    for (c0, v0), (c1, v1) in itertools.pairwise(points):
        if c <= c1:
            return v0 + (v1 - v0) * (c - c0) / (c1 - c0)
    return points[-1][1]


@dataclass(frozen=True, slots=True)
class SpeedCurve:
    """Median TPOT and TTFT by concurrency, as ascending (concurrency, seconds) points."""

    points: tuple[tuple[float, float], ...]  # TPOT
    ttft_points: tuple[tuple[float, float], ...]  # TTFT; one point: batch-1 TTFT, scaled with TPOT

    @classmethod
    def from_profile(cls, speed: SpeedProfile) -> SpeedCurve:
        if speed.tpot_ms_at:
            tpot = {int(k): ms / 1000.0 for k, ms in speed.tpot_ms_at.items()}
        else:
            tpot = {int(k): int(k) / tok_s for k, tok_s in speed.tok_s_at.items()}
        tpot.setdefault(1, 1.0 / speed.tok_s_bs1)
        ttft = {int(k): ms / 1000.0 for k, ms in speed.ttft_ms_at.items()}
        if 1 not in ttft:
            ttft[1] = speed.ttft_ms_p50 / 1000.0 if speed.ttft_ms_p50 is not None else 2.0 * tpot[1]
        return cls(
            tuple((float(c), v) for c, v in sorted(tpot.items())),
            tuple((float(c), v) for c, v in sorted(ttft.items())),
        )

    def tpot_s(self, concurrency: float) -> float:
        c = max(1.0, concurrency)
        last_c, last_s = self.points[-1]
        if c >= last_c:  # no measurement past the last level: assume throughput stays flat
            return last_s * c / last_c
        return _interpolate(self.points, c)

    def tok_s(self, concurrency: float) -> float:
        return max(1.0, concurrency) / self.tpot_s(concurrency)

    def ttft_s(self, concurrency: float) -> float:
        """Measured TTFT where there are levels; past the last one it grows with TPOT."""
        c = max(1.0, concurrency)
        last_c, last_s = self.ttft_points[-1]
        if c >= last_c:
            return last_s * self.tpot_s(c) / self.tpot_s(last_c)
        return _interpolate(self.ttft_points, c)

    @property
    def prefill_steps(self) -> float:
        """Batch-1 TTFT in units of batch-1 decode steps (the simulator's prefill cost)."""
        return self.ttft_points[0][1] / self.points[0][1]


@dataclass(frozen=True, slots=True)
class Correction:
    """Observed / manifest-predicted median TPOT and TTFT of a variant (1.0: the manifest is right)."""

    tpot: float = 1.0
    ttft: float = 1.0


@dataclass(frozen=True, slots=True)
class ReplicaCapacity:
    """One replica of a variant at the largest concurrency that meets the SLO."""

    variant: str
    quality: float  # agreement with the full model
    concurrency: int
    rps: float  # requests per second it sustains there
    meets_slo: bool  # False: even one request at a time misses the targets


def replica_capacity(
    variant: str,
    quality: float,
    curve: SpeedCurve,
    limits: SLOTarget,
    max_num_seqs: int,
    mean_output_tokens: float,
    correction: Correction | None = None,
) -> ReplicaCapacity:
    fix = correction or Correction()
    limits_ms = (limits.ttft_p95_ms, limits.tpot_p95_ms, limits.e2e_p95_ms)
    limits_s = [None if ms is None else ms / 1000.0 for ms in limits_ms]

    def latencies(c: int) -> tuple[float, float, float]:
        tpot_s = curve.tpot_s(c) * fix.tpot
        ttft_s = curve.ttft_s(c) * fix.ttft
        return ttft_s, tpot_s, ttft_s + max(0.0, mean_output_tokens - 1.0) * tpot_s

    def meets(c: int) -> bool:
        pairs = zip(latencies(c), limits_s, strict=True)
        return all(limit is None or value * TAIL_P95_OVER_P50 <= limit for value, limit in pairs)

    best = 1
    for c in range(2, max_num_seqs + 1):  # latencies grow with concurrency: stop at the first miss
        if not meets(c):
            break
        best = c
    return ReplicaCapacity(variant, quality, best, best / latencies(best)[2], meets(1))


def capacities(
    manifest: VariantManifest,
    variants: Sequence[VariantBounds],
    slo: SLOConfig,
    mean_output_tokens: float = DEFAULT_OUTPUT_TOKENS,
    corrections: Mapping[str, Correction] | None = None,
) -> dict[str, ReplicaCapacity]:
    """Capacity per configured variant (every one must be in the manifest), under the strictest targets."""
    limits = SLOTarget.strictest(slo.classes.values())
    fixes = corrections or {}
    result = {}
    for v in variants:
        entry = manifest.get(v.name)
        curve = SpeedCurve.from_profile(entry.speed)
        result[v.name] = replica_capacity(
            v.name,
            entry.quality.agreement,
            curve,
            limits,
            v.max_num_seqs,
            mean_output_tokens,
            fixes.get(v.name),
        )
    return result

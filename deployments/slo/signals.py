"""What the SLO policy derives from one observation before it decides: `Signals`.

Arrival rates with Poisson confidence bounds (a rise must clear the noise before the policy acts
on it; a fall must clear it before the policy restores or scales down), the long-run rate and the
burst flag, the observed SLO risk per variant (worst p95 / target over classes), the requests
each variant runs beyond the concurrency its SLO allows (a backlog), the online latency correction
per variant (observed median TPOT and TTFT over the manifest curve's prediction
at the window's average concurrency by Little's law, learned from steady windows only), the mean output length averaged
over several windows, each replica's capacity under the SLO with those corrections, and the quality
budget (a leaky bucket of quality loss x seconds, drained at the budgeted loss rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from deployments.slo.capacity import (
    DEFAULT_OUTPUT_TOKENS,
    Correction,
    ReplicaCapacity,
    SpeedCurve,
    capacities,
)
from deployments.slo.decision import PolicyState
from deployments.slo.observation import LatencyStats, Observation, VariantObservation
from deployments.slo.settings import VariantBounds
from inference.schema.config.slo import ControllerConfig, SLOConfig, SLOTarget
from inference.schema.manifest import VariantManifest

Z_NOISE = 2.0  # standard deviations of Poisson noise a rate change must clear
Z_EXCESS = 1.5  # ... running requests must clear over the SLO's concurrency (a count, not a rate estimate)
Z_SURE = 3.0  # ... for the short window to justify new replicas (slow, costly to undo)
Z_CALM = 1.0  # ... a restore's rate estimate (upper bound; the hysteresis band is the rest of the margin)
OUTPUT_PRIOR_SAMPLES = 1.0  # the default output length counts as this many finished requests
SPEED_EWMA = 0.2  # weight of a new latency-correction sample
SPEED_BOUNDS = (0.5, 4.0)  # observed / manifest latency is trusted within these
ERROR_RATE_AT_RISK = 0.05  # this share of failed requests counts as an SLO breach
ERROR_RISK = 2.0


@dataclass(frozen=True, slots=True)
class Signals:
    """Per-decision view of the load and the variants (rates in requests per second)."""

    now_s: float
    dt_s: float
    rate_rps: float  # arrivals over the window
    rate_rise_rps: float  # at least this, with confidence (degrade trigger)
    rate_sure_rps: float  # at least this, with more confidence in the short window (scale-up)
    rate_plan_rps: float  # the window's rate, or the recent one carried along a sure rise
    rate_calm_rps: float  # at most this, as far as the window tells (restore, scale-down)
    long_rate_rps: float
    in_burst: bool
    risk: dict[str, float]
    ready: dict[str, int]
    queue_depth: dict[str, int]
    excess: dict[str, float]  # requests running beyond the SLO's concurrency (past the noise)
    caps: dict[str, ReplicaCapacity]
    quality: dict[str, float]
    corrections: dict[str, Correction]
    mean_output_tokens: float
    output_samples: float
    quality_debt_s: float
    budget_spent: bool


def rate_bounds(rate_rps: float, span_s: float, z: float = Z_NOISE) -> tuple[float, float]:
    """(lower, upper) confidence bounds of a Poisson rate seen as `rate_rps` over `span_s`, z standard
    deviations out. Exact-shaped (Wilson-Hilferty on the count), not the normal approximation: at the
    few arrivals a short window holds at a few requests per second, rate +- z sqrt(rate / span)
    puts the lower bound above the true rate far more often than z promises (and flaps)."""
    if span_s <= 0:
        return rate_rps, rate_rps
    n = max(rate_rps, 0.0) * span_s
    lower = n * (1.0 - 1.0 / (9.0 * n) - z / (3.0 * math.sqrt(n))) ** 3 if n > 0 else 0.0
    m = n + 1.0
    upper = m * (1.0 - 1.0 / (9.0 * m) + z / (3.0 * math.sqrt(m))) ** 3
    return max(0.0, lower) / span_s, upper / span_s


def _ratio(stats: LatencyStats, targets: list[SLOTarget]) -> float:
    """Worst p95 / target of some stats against the strictest of some targets."""
    strictest = SLOTarget.strictest(targets)
    worst = 0.0
    for metric in ("ttft", "tpot", "e2e"):
        limit_ms = getattr(strictest, f"{metric}_p95_ms")
        value_s = stats.p95_s(metric)  # type: ignore[arg-type]
        if limit_ms is not None and value_s is not None:
            worst = max(worst, value_s * 1000.0 / limit_ms)
    if stats.error_rate >= ERROR_RATE_AT_RISK:
        worst = max(worst, ERROR_RISK)
    return worst


def observed_risk(variant: VariantObservation, slo: SLOConfig, min_samples: int) -> float:
    """Worst observed p95 / target over the variant's SLO classes with enough samples; when no
    class has enough but all together do (a quiet variant), the pooled p95 against the strictest
    targets of its classes. 0 without enough samples."""
    counted = {n: s for n, s in variant.by_class.items() if s.num_requests >= min_samples}
    if counted:
        return max(_ratio(stats, [slo.target(n)]) for n, stats in counted.items())
    if variant.latency.num_requests >= min_samples:
        classes = list(variant.by_class) or [slo.default_class]
        return _ratio(variant.latency, [slo.target(n) for n in classes])
    return 0.0


def _learn(variant: VariantObservation, curve: SpeedCurve, previous: Correction, steady: bool,
           min_samples: int) -> Correction:
    """Update a variant's latency correction from a steady window only (no backlog, no recent shift
    or burst, completions keeping up with arrivals): then its median TPOT and TTFT belong to the
    concurrency its replicas run at now."""
    stats, replicas = variant.latency, variant.replicas
    keeping_up = abs(variant.completion_rate_rps - variant.arrival_rate_rps) <= 0.25 * variant.arrival_rate_rps
    if (
        not steady
        or not keeping_up
        or stats.num_requests < min_samples
        or stats.tpot_p50_s is None
        or stats.ttft_p50_s is None
        or replicas.num_replicas_ready <= 0
        or replicas.queue_depth > 0
    ):
        return previous
    # The concurrency these latencies were measured at: the window's time average per replica
    # (Little's law over the same window as the medians), plus the request itself, which sees about
    # the time average of the others (Poisson arrivals). Not the count running at this instant: at a
    # few requests per replica its noise biased the learned ratio upward (E[a / X] > a / E[X]); the
    # simulator with the manifest as ground truth learned 1.21-1.27 for a true 1.0 at steady 0.55 rps,
    # sized `full` 35% too small and degraded on noise. Little's law there learns 1.01.
    concurrency = variant.completion_rate_rps * (stats.e2e_mean_s or 0.0) / replicas.num_replicas_ready + 1.0

    def blend(old: float, observed_s: float, predicted_s: float) -> float:
        ratio = min(max(observed_s / predicted_s, SPEED_BOUNDS[0]), SPEED_BOUNDS[1])
        return old + SPEED_EWMA * (ratio - old)

    return Correction(
        tpot=blend(previous.tpot, stats.tpot_p50_s, curve.tpot_s(concurrency)),
        ttft=blend(previous.ttft, stats.ttft_p50_s, curve.ttft_s(concurrency)),
    )


def _excess(variant: VariantObservation, cap: ReplicaCapacity) -> float:
    """Requests running beyond the concurrency at which the variant meets the SLO, less Poisson
    noise: a timely overload signal where latency samples are still few."""
    allowed = cap.concurrency * variant.replicas.num_replicas_ready
    limit = allowed + Z_EXCESS * math.sqrt(allowed)
    return max(0.0, variant.replicas.num_ongoing - limit) if allowed > 0 else 0.0


def _ewma(previous: float | None, value: float | None, dt_s: float, tau_s: float) -> float | None:
    if value is None:
        return previous
    if previous is None:
        return value
    keep = math.exp(-dt_s / tau_s)
    return keep * previous + (1.0 - keep) * value


def _output_length(
    state: PolicyState, observed: float | None, ended: float, dt_s: float, tau_s: float
) -> tuple[float, float]:
    """(mean output length, the requests it rests on): a running mean weighted by requests, each
    forgotten over `tau_s`, starting from the default as `OUTPUT_PRIOR_SAMPLES` requests. Weighted by
    requests, not time, the first window of real traffic outweighs the default (a time average kept
    128 -> 101 tokens after 12 s of 4 requests a second of 12 tokens, and a capacity 8x too low).
    Simulated, a prior of 1 or of 5 requests gave the same schedules."""
    mean = state.mean_output_tokens if state.mean_output_tokens is not None else DEFAULT_OUTPUT_TOKENS
    weight = state.output_samples if state.mean_output_tokens is not None else OUTPUT_PRIOR_SAMPLES
    weight *= math.exp(-dt_s / tau_s)
    if observed is None or ended <= 0:
        return mean, weight
    return (mean * weight + observed * ended) / (weight + ended), weight + ended


def _rate_to_plan(
    rate: float, recent: float, recent_lower: float, window_s: float, recent_s: float, controller: ControllerConfig
) -> float:
    """The window's rate, or, when the recent rate surely rose above it, the recent rate carried
    along the rise to the next decision (the two windows' centres are (window - recent) / 2 apart):
    a step keeps rising through the short window, and a split sized for where it was half a window
    ago is degraded twice."""
    if recent_lower <= rate or window_s <= recent_s:
        return rate
    ahead = (recent_s / 2.0 + controller.interval_s) / ((window_s - recent_s) / 2.0)
    return recent + (recent - rate) * ahead


def _rate_to_restore(window_calm: float, long_calm: float, recent_lower: float) -> float:
    """At most this rate, for a restore: the larger of the window's and the long-run rate's upper
    bounds, and any rise the recent window is sure of. At a steady few requests per second the
    window's bound alone swings by tens of percent, wider than the restore band: a restore sized on
    one low swing is undone by the next degrade (two mix changes for nothing)."""
    return max(window_calm, long_calm, recent_lower)


def read_signals(
    obs: Observation,
    state: PolicyState,
    slo: SLOConfig,
    manifest: VariantManifest,
    controller: ControllerConfig,
    variants: Sequence[VariantBounds],
) -> Signals:
    now_s = obs.now_s
    dt_s = max(0.0, now_s - state.last_decision_s) if state.last_decision_s is not None else 0.0
    rate, recent = obs.arrival_rate_rps, obs.recent_arrival_rate_rps
    window_lower, _ = rate_bounds(rate, obs.window_s)
    _, window_calm = rate_bounds(rate, obs.window_s, Z_CALM)
    recent_lower, _ = rate_bounds(recent, obs.recent_window_s)
    recent_sure, _ = rate_bounds(recent, obs.recent_window_s, Z_SURE)
    rise = max(window_lower, recent_lower)
    previous_long = state.long_rate_rps if state.long_rate_rps is not None else rate
    long_tau_s = max(controller.scale_down_hold_s, controller.window_s)
    long_rate = _ewma(previous_long, rate, dt_s, long_tau_s) or 0.0
    _, long_calm = rate_bounds(long_rate, long_tau_s, Z_CALM)
    in_burst = recent_lower > controller.burst_ratio * previous_long and previous_long > 0

    names = [v.name for v in variants]
    last_shift_s = max(state.last_degrade_s, state.last_restore_s, state.last_burst_s)
    steady = not in_burst and now_s - last_shift_s >= controller.window_s
    corrections = {
        n: _learn(
            obs.variant(n),
            SpeedCurve.from_profile(manifest.get(n).speed),
            state.corrections.get(n, Correction()),
            steady,
            controller.min_samples,
        )
        for n in names
    }
    finished = sum(obs.variant(n).latency.num_requests for n in names)
    observed_output = obs.mean_tokens()[1] if finished >= controller.min_samples else None
    ended = finished if state.last_decision_s is None else dt_s * sum(obs.variant(n).completion_rate_rps for n in names)
    mean_output, output_samples = _output_length(state, observed_output, ended, dt_s, 5.0 * controller.window_s)
    caps = capacities(manifest, variants, slo, mean_output, corrections)
    quality = {n: caps[n].quality for n in names}

    served = {n: obs.variant(n).arrival_rate_rps for n in names}
    total = sum(served.values())
    shares = {n: r / total for n, r in served.items()} if total > 0 else dict(state.weights)
    loss = sum(share * (1.0 - quality.get(n, 1.0)) for n, share in shares.items())
    debt = max(0.0, state.quality_debt_s + dt_s * (loss - controller.quality_budget))
    return Signals(
        now_s=now_s,
        dt_s=dt_s,
        rate_rps=rate,
        rate_rise_rps=rise,
        rate_sure_rps=max(window_lower, recent_sure),
        rate_plan_rps=_rate_to_plan(rate, recent, recent_lower, obs.window_s, obs.recent_window_s, controller),
        rate_calm_rps=_rate_to_restore(window_calm, long_calm, recent_lower),
        long_rate_rps=long_rate,
        in_burst=in_burst,
        risk={n: observed_risk(obs.variant(n), slo, controller.min_samples) for n in names},
        ready={n: obs.variant(n).replicas.num_replicas_ready for n in names},
        queue_depth={n: obs.variant(n).replicas.queue_depth for n in names},
        excess={n: _excess(obs.variant(n), caps[n]) for n in names},
        caps=caps,
        quality=quality,
        corrections=corrections,
        mean_output_tokens=mean_output,
        output_samples=output_samples,
        quality_debt_s=debt,
        budget_spent=debt >= controller.quality_budget * controller.quality_budget_window_s,
    )

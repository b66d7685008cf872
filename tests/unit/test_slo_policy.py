"""The SLO policy with a fake clock: observations are built directly (the layer below), the
manifest is the labelled example one, and time advances in control intervals."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deployments.slo.capacity import Correction, SpeedCurve
from deployments.slo.decision import Decision, PolicyState
from deployments.slo.observation import LatencyStats, Observation, VariantLoad, VariantObservation
from deployments.slo.policy import PolicyError, decide
from deployments.slo.settings import VariantBounds
from inference.schema.config import ControllerConfig, SLOConfig, VariantConfig
from inference.schema.manifest import VariantManifest

MANIFEST = VariantManifest.load(Path(__file__).parents[2] / "load_tests" / "traces" / "example_manifest.json")
SLO = SLOConfig()  # interactive: TTFT p95 1000 ms, TPOT p95 150 ms
CTL = ControllerConfig(enabled=True, max_total_replicas=6)
# one replica under the SLO sustains about: full 2.32 rps, int8 3.47 rps, distilled 4.18 rps
FULL, INT8, DISTILLED = (
    VariantConfig(name="full", num_replicas=1, min_replicas=1, max_replicas=4, weight=1.0),
    VariantConfig(name="int8", num_replicas=1, min_replicas=1, max_replicas=4, weight=0.0),
    VariantConfig(name="distilled", num_replicas=0, min_replicas=0, max_replicas=4, weight=0.0),
)
VARIANTS = [FULL, INT8, DISTILLED]
# full with room for 64 running requests, past the concurrency its SLO allows: a running-count overload is possible
FULL_64 = FULL.model_copy(update={"engine": FULL.engine.model_copy(update={"max_num_seqs": 64})})


def stats(n: int = 100, ttft_p95_s: float = 0.2, tpot_p95_s: float = 0.06, **more: float) -> LatencyStats:
    return LatencyStats(num_requests=n, ttft_p95_s=ttft_p95_s, tpot_p95_s=tpot_p95_s, mean_output_tokens=128.0,
                        **more)  # type: ignore[arg-type]


def observe(now_s: float, state: PolicyState, rate_rps: float, ready: dict[str, int], *,
            recent_rps: float | None = None, p95: dict[str, float] | None = None, queue: dict[str, int] | None = None,
            ongoing: dict[str, int] | None = None, latency: dict[str, LatencyStats] | None = None) -> Observation:
    """The router's view: the rate split by the current weights, p95 TTFT per variant (seconds)."""
    recent = rate_rps if recent_rps is None else recent_rps
    out = {}
    for name, weight in state.weights.items():
        lat = (latency or {}).get(name) or stats(ttft_p95_s=(p95 or {}).get(name, 0.2))
        running = max(ready.get(name, 0), state.replica_targets.get(name, 0))
        out[name] = VariantObservation(
            name=name, latency=lat, by_class={"interactive": lat},
            arrival_rate_rps=rate_rps * weight, recent_arrival_rate_rps=recent * weight,
            completion_rate_rps=rate_rps * weight,
            replicas=VariantLoad(running, ready.get(name, 0), (queue or {}).get(name, 0), (ongoing or {}).get(name, 0)),
        )
    return Observation(now_s, CTL.window_s, CTL.recent_window_s, out)


def step(obs: Observation, state: PolicyState, controller: ControllerConfig = CTL,
         variants: list[VariantConfig] = VARIANTS) -> tuple[Decision, PolicyState]:
    """One decision, with the configuration converted as the controller converts it."""
    bounds = [VariantBounds.of(v) for v in variants]
    return decide(obs, state, SLO, MANIFEST, controller, bounds)


def test_degrades_within_one_interval_of_an_observed_violation() -> None:
    state = PolicyState.initial(VARIANTS)
    ready = {"full": 1, "int8": 1}
    for now in (5.0, 10.0, 15.0):  # 1.9 rps on full is inside the model's capacity: calm
        decision, state = step(observe(now, state, 1.9, ready), state)
        assert decision.reason_code == "hold"
    decision, state = step(observe(20.0, state, 1.9, ready, p95={"full": 1.5}), state)  # TTFT p95 1.5 s > 1 s
    assert decision.reason_code == "degrade" and decision.at_risk
    assert decision.weights["int8"] > 0 and decision.weights["full"] * 1.9 <= 0.85 * 1.9 + 1e-9
    assert "full" in decision.reason


def test_degrades_at_once_when_the_rate_surely_exceeds_capacity() -> None:
    state = PolicyState.initial(VARIANTS)
    decision, state = step(observe(5.0, state, 3.5, {"full": 1, "int8": 1}, p95={"full": 0.1}), state)
    assert decision.reason_code == "degrade"
    assert decision.weights["full"] * 3.5 <= CTL.target_utilization * 2.33
    assert decision.weights["distilled"] == 0.0  # no ready replica: never routed to


def test_running_beyond_the_slo_concurrency_is_a_risk_even_without_latency_samples() -> None:
    state = PolicyState.initial(VARIANTS)  # full meets the SLO up to 32 running requests per replica
    quiet = stats(n=0)
    decision, _ = step(observe(5.0, state, 1.0, {"full": 1, "int8": 1}, ongoing={"full": 30},
                               latency={"full": quiet}), state)
    assert decision.reason_code == "hold"
    variants = [FULL_64, INT8, DISTILLED]
    decision, _ = step(observe(5.0, state, 1.0, {"full": 1, "int8": 1}, ongoing={"full": 50},
                               latency={"full": quiet}), state, variants=variants)
    assert decision.reason_code == "degrade" and decision.weights["int8"] > 0


def test_a_quiet_variant_is_judged_on_all_its_classes_together() -> None:
    state = PolicyState.initial(VARIANTS)
    few = stats(n=12, ttft_p95_s=2.0)  # under min_samples per class, 24 together
    latency = VariantObservation("full", latency=stats(n=24, ttft_p95_s=2.0), by_class={"interactive": few, "batch": few},
                                 arrival_rate_rps=1.9, recent_arrival_rate_rps=1.9, completion_rate_rps=1.9,
                                 replicas=VariantLoad(1, 1, 0, 20))
    obs = observe(5.0, state, 1.9, {"full": 1, "int8": 1})
    obs = Observation(5.0, obs.window_s, obs.recent_window_s, {**obs.variants, "full": latency})
    decision, _ = step(obs, state)
    assert decision.reason_code == "degrade"


def degraded_then_calm(full_share: float, rate_rps: float, until_s: float) -> list[tuple[float, str, float]]:
    """(time, reason code, full's weight) of each decision, every 5 s after a degrade at 0 that left
    `full_share` on full, at a steady rate."""
    state = replace(PolicyState.initial(VARIANTS), last_degrade_s=0.0,
                    weights={"full": full_share, "int8": 1.0 - full_share, "distilled": 0.0})
    history = []
    for now in np.arange(5.0, until_s, 5.0):
        decision, state = step(observe(float(now), state, rate_rps, {"full": 1, "int8": 1}), state)
        history.append((float(now), decision.reason_code, decision.weights["full"]))
    return history


def test_restores_after_the_hold_in_one_move_when_the_best_variant_carries_it_all() -> None:
    # 1.0 rps fits on full at target_utilization (2.32 rps x 0.8): no reason to come back in steps
    history = degraded_then_calm(0.5, 1.0, 160.0)
    restores = [(t, w) for t, code, w in history if code == "restore"]
    assert all(code == "hold" for t, code, _ in history if t < CTL.restore_hold_s)
    assert len(restores) == 1 and restores[0][0] >= CTL.restore_hold_s and restores[0][1] == pytest.approx(1.0)


def test_a_partial_restore_goes_one_step_at_a_time_after_each_hold() -> None:
    # 2.0 rps: full alone would pass target_utilization, so the way back is sized at
    # restore_utilization and paced by restore_step
    history = degraded_then_calm(0.0, 2.0, 400.0)
    restores = [(t, w) for t, code, w in history if code == "restore"]
    assert len(restores) >= 2 and restores[0][0] >= CTL.restore_hold_s
    fulls = [0.0] + [w for _, _, w in history]
    assert all(b - a <= CTL.restore_step + 1e-9 for a, b in itertools.pairwise(fulls))
    assert all(b - a >= CTL.restore_hold_s for a, b in itertools.pairwise(t for t, _ in restores))
    assert 0.5 < fulls[-1] < 1.0  # full takes what fits at restore_utilization, not everything


def test_a_degrade_is_not_repeated_while_its_running_requests_drain() -> None:
    """Requests already running on a variant stay there after a degrade: its running count stays
    past the SLO's concurrency (plus noise) for a moment, which is no new risk."""
    state, variants, quiet = PolicyState.initial(VARIANTS), [FULL_64, INT8, DISTILLED], stats(n=0)
    decision, state = step(observe(5.0, state, 1.5, {"full": 1, "int8": 1}, ongoing={"full": 50},
                                   latency={"full": quiet}), state, variants=variants)
    assert decision.reason_code == "degrade"
    moved = dict(decision.weights)
    decision, state = step(observe(7.0, state, 1.8, {"full": 1, "int8": 1}, ongoing={"full": 50},
                                   latency={"full": quiet}), state, variants=variants)
    assert decision.reason_code == "hold" and dict(decision.weights) == moved
    later = 5.0 + CTL.recent_window_s  # still past the SLO's concurrency after the drain time: a risk again
    decision, _ = step(observe(later, state, 1.8, {"full": 1, "int8": 1}, ongoing={"full": 50},
                               latency={"full": quiet}), state, variants=variants)
    assert decision.at_risk and decision.weights["full"] < moved["full"]


def test_traffic_never_moves_onto_a_variant_at_risk() -> None:
    """full runs past its SLO's concurrency (a risk) while the rate would fit more on it: handing
    it more traffic now would be a restore, which waits for calm and the hold."""
    state = replace(PolicyState.initial(VARIANTS), weights={"full": 0.3, "int8": 0.7, "distilled": 0.0},
                    last_degrade_s=-100.0)
    decision, _ = step(observe(5.0, state, 1.5, {"full": 1, "int8": 1}, ongoing={"full": 46},
                               latency={"full": stats(n=0)}), state, variants=[FULL_64, INT8, DISTILLED])
    assert decision.at_risk
    assert decision.weights["full"] <= 0.3 + 1e-9, decision.reason


def test_no_restore_without_headroom() -> None:
    # degraded to the best split at 2.5 rps; the load stays there: restoring would not fit
    state = replace(PolicyState.initial(VARIANTS), weights={"full": 0.74, "int8": 0.26, "distilled": 0.0},
                    last_degrade_s=0.0)
    for now in np.arange(5.0, 600.0, 5.0):
        decision, state = step(observe(float(now), state, 2.5, {"full": 1, "int8": 1}), state)
        assert not decision.weights_changed, decision.reason


def test_a_blip_restarts_the_restore_hold() -> None:
    state = replace(PolicyState.initial(VARIANTS), weights={"full": 0.5, "int8": 0.5, "distilled": 0.0},
                    last_degrade_s=-1000.0)
    first_restore = None
    for now in np.arange(5.0, 200.0, 5.0):
        p95 = {"full": 0.7, "int8": 0.7} if now == 50.0 else None  # 0.7 of target: not calm, not at risk
        decision, state = step(observe(float(now), state, 1.0, {"full": 1, "int8": 1}, p95=p95), state)
        if decision.reason_code == "restore" and first_restore is None:
            first_restore = float(now)
    assert first_restore is not None and first_restore >= 55.0 + CTL.restore_hold_s


def test_no_oscillation_under_noisy_steady_load() -> None:
    rng = np.random.default_rng(3)
    state = PolicyState.initial(VARIANTS)
    changes = 0
    for now in np.arange(5.0, 3600.0 + 1, 5.0):  # one hour at a steady 2.2 rps
        rate = rng.poisson(2.2 * CTL.window_s) / CTL.window_s
        recent = rng.poisson(2.2 * CTL.recent_window_s) / CTL.recent_window_s
        p95 = {"full": float(rng.uniform(0.1, 0.4)), "int8": float(rng.uniform(0.1, 0.3))}
        decision, state = step(observe(float(now), state, rate, {"full": 1, "int8": 1}, recent_rps=recent, p95=p95),
                               state)
        changes += decision.weights_changed
        assert not decision.replicas_changed
    assert changes <= 4


def test_the_floor_buys_capacity_instead_of_overloading_the_best_variant() -> None:
    variants = [FULL, DISTILLED.model_copy(update={"num_replicas": 1, "min_replicas": 1})]
    controller = CTL.model_copy(update={"quality_floor": 0.9})
    state = PolicyState.initial(variants)
    # 6 rps: within the two replicas' raw capacity (2.32 + 4.18), beyond their safe one at 80%
    decision, _ = step(observe(5.0, state, 6.0, {"full": 1, "distilled": 1}), state, controller, variants)
    assert decision.at_risk and decision.expected_quality < 0.9  # one full replica cannot carry the floor's share
    assert decision.weights["full"] * 6.0 <= 2.33 + 1e-9  # ... and is not pushed past what it carries
    assert sum(decision.replica_targets.values()) > 2  # capacity for the floor is on its way
    ready = {"full": decision.replica_targets["full"], "distilled": 1}
    state = replace(state, replica_targets=decision.replica_targets, last_degrade_s=-1000.0)
    decision, _ = step(observe(100.0, state, 3.0, ready), state, controller, variants)
    assert decision.expected_quality >= 0.9 - 1e-9  # where the capacity is there, the floor holds


@pytest.mark.parametrize("seed", range(40))
def test_bounds_budget_floor_and_routable_weights(seed: int) -> None:
    """Random load, readiness, latency and backlog: every decision stays inside the bounds."""
    rng = np.random.default_rng(seed)
    budget = int(rng.integers(2, 9))
    controller = CTL.model_copy(update={"max_total_replicas": budget})
    names = [v.name for v in VARIANTS]
    state = PolicyState.initial(VARIANTS)
    for i in range(int(rng.integers(1, 8))):
        rate = float(rng.uniform(0.0, 20.0))
        ready_now = {n: int(rng.integers(0, 5)) for n in names}
        obs = observe(5.0 * (i + 1), state, rate, ready_now, recent_rps=float(rng.uniform(0.0, 20.0)),
                      p95={n: float(rng.uniform(0.0, 3.0)) for n in names},
                      queue={n: int(rng.integers(0, 30)) for n in names})
        decision, state = step(obs, state, controller)
        targets = decision.replica_targets
        assert all(v.min_replicas <= targets[v.name] <= v.max_replicas for v in VARIANTS)
        assert sum(targets.values()) <= budget
        assert min(decision.weights.values()) >= 0 and sum(decision.weights.values()) == pytest.approx(1.0)
        if decision.weights_changed:
            assert all(decision.weights[n] == 0 for n in names if ready_now[n] == 0)
        if decision.expected_quality < controller.quality_floor - 1e-9:  # capacity for the floor is coming
            starting = any(targets[n] > ready_now[n] for n in names)
            better_room = any(targets[v.name] < v.max_replicas and MANIFEST.get(v.name).quality.agreement
                              > decision.expected_quality for v in VARIANTS)
            # The floor yields to the SLO (a slow variant pushed past its safe capacity misses the SLO for
            # every request it runs): the traffic move plans on the rate to plan and believes backlogs
            # and observed latency, the replica planner on the confident (lower) rate, so a split at
            # risk may sit below the floor until the rise is sure, and the split it left holds until the
            # restore hold has passed; no other move goes below it.
            assert decision.at_risk or not decision.weights_changed or starting or sum(targets.values()) == budget or not better_room


def test_decisions_are_deterministic() -> None:
    state = replace(PolicyState.initial(VARIANTS), long_rate_rps=1.0, last_degrade_s=-500.0)
    obs = observe(100.0, state, 3.1, {"full": 1, "int8": 1}, recent_rps=4.0, p95={"full": 1.2}, queue={"full": 4})
    first = step(obs, state)
    assert all(step(obs, state) == first for _ in range(3))


def test_scales_up_and_bridges_the_cold_start_with_ready_variants() -> None:
    state = PolicyState.initial(VARIANTS)
    decision, state = step(observe(5.0, state, 8.0, {"full": 1, "int8": 1}), state)
    assert decision.reason_code.endswith("scale_up") and sum(decision.replica_targets.values()) > 2
    added = {n for n in decision.replica_targets if decision.replica_targets[n] > {"full": 1, "int8": 1}.get(n, 0)}
    assert all(decision.weights[n] == 0 for n in added if n == "distilled")  # not ready yet: no traffic
    assert "cold start" not in decision.reason or "bridge" in decision.reason
    for now in (10.0, 15.0, 20.0):  # still starting: no more replicas for the same deficit
        decision, state = step(observe(now, state, 8.0, {"full": 1, "int8": 1}), state)
        assert not decision.replicas_changed


def test_never_scales_down_during_a_burst_but_does_after_a_calm_hold() -> None:
    state = replace(PolicyState.initial(VARIANTS), replica_targets={"full": 3, "int8": 1, "distilled": 0},
                    long_rate_rps=1.0)
    ready = {"full": 3, "int8": 1}
    decision, _ = step(observe(1000.0, state, 1.0, ready, recent_rps=4.0), state)
    assert decision.replica_targets == {"full": 3, "int8": 1, "distilled": 0}
    decision, state = step(observe(1000.0, state, 1.0, ready), state)
    assert decision.reason_code == "scale_down" and decision.replica_targets["full"] == 2
    decision, state = step(observe(1005.0, state, 1.0, {"full": 2, "int8": 1}), state)
    assert not decision.replicas_changed  # one at a time, after another hold
    decision, state = step(observe(1000.0 + CTL.scale_down_hold_s, state, 1.0, {"full": 2, "int8": 1}), state)
    assert decision.reason_code == "scale_down" and decision.replica_targets["full"] == 1


def test_spent_quality_budget_buys_capacity_of_the_best_variant() -> None:
    variants = [FULL, DISTILLED.model_copy(update={"num_replicas": 1, "min_replicas": 1})]
    base = replace(PolicyState.initial(variants), weights={"full": 0.62, "distilled": 0.38})
    ready = {"full": 1, "distilled": 1}
    decision, _ = step(observe(5.0, base, 3.0, ready), base, variants=variants)
    assert not decision.replicas_changed  # budget left: degrading is allowed
    spent = replace(base, quality_debt_s=CTL.quality_budget * CTL.quality_budget_window_s + 1.0)
    decision, _ = step(observe(5.0, spent, 3.0, ready), spent, variants=variants)
    assert decision.reason_code == "scale_up" and decision.replica_targets["full"] == 2


def test_traffic_leaves_a_variant_without_ready_replicas() -> None:
    state = replace(PolicyState.initial(VARIANTS), weights={"full": 0.3, "int8": 0.7, "distilled": 0.0})
    decision, _ = step(observe(5.0, state, 1.0, {"full": 1, "int8": 0}), state)
    assert decision.reason_code in ("rebalance", "rebalance_scale_up") and decision.weights["int8"] == 0.0


def test_latency_correction_learns_a_slower_replica() -> None:
    curve = SpeedCurve.from_profile(MANIFEST.get("full").speed)
    state = PolicyState.initial(VARIANTS)
    # 1 rps x 10 s in the system = 10 running on average; a request runs beside them: concurrency 11
    slow = stats(tpot_p50_s=1.5 * curve.tpot_s(11), ttft_p50_s=1.5 * curve.ttft_s(11), e2e_mean_s=10.0)
    for now in np.arange(5.0, 300.0, 5.0):
        obs = observe(float(now), state, 1.0, {"full": 1, "int8": 1}, ongoing={"full": 10}, latency={"full": slow})
        _, state = step(obs, state)
    assert state.corrections["full"].tpot == pytest.approx(1.5, rel=0.05)
    assert state.corrections["full"].ttft == pytest.approx(1.5, rel=0.05)


def test_latency_correction_is_unbiased_at_light_load() -> None:
    """A replica exactly as fast as its manifest, at a few requests in flight whose count at the
    decision instants swings 1, 9, 1, 9 around a mean of 5: the latencies belong to the window's
    average concurrency, so nothing is learned. Read from the instantaneous count, it learned 1.16
    here (an instant with 1 running predicts a far faster TPOT than the window saw, and the average
    of the ratios is not the ratio of the averages), and `full` was sized that much too small."""
    curve = SpeedCurve.from_profile(MANIFEST.get("full").speed)
    state = PolicyState.initial(VARIANTS)
    true = stats(tpot_p50_s=curve.tpot_s(6), ttft_p50_s=curve.ttft_s(6), e2e_mean_s=5.0)  # 1 rps x 5 s: 5 + 1
    for i, now in enumerate(np.arange(5.0, 300.0, 5.0)):
        running = (1, 9)[i % 2]
        obs = observe(float(now), state, 1.0, {"full": 1, "int8": 1}, ongoing={"full": running}, latency={"full": true})
        _, state = step(obs, state)
    assert state.corrections["full"].tpot == pytest.approx(1.0, abs=0.02)
    assert state.corrections["full"].ttft == pytest.approx(1.0, abs=0.02)


def test_unknown_variant_is_a_policy_error() -> None:
    ghost = [*VARIANTS, VariantConfig(name="ghost", min_replicas=0, num_replicas=0, weight=0.0)]
    state = PolicyState.initial(ghost)
    with pytest.raises(PolicyError, match="ghost"):
        step(observe(5.0, state, 1.0, {"full": 1}), state, variants=ghost)


def test_learned_state_survives_a_json_round_trip_and_bad_entries_are_ignored() -> None:
    state = PolicyState.initial(VARIANTS)
    for now in (5.0, 10.0, 15.0):  # learn something: a rate, an output length, a correction
        _, state = step(observe(now, state, 2.0, {"full": 1, "int8": 1}), state)
    state = replace(state, corrections={"full": Correction(tpot=1.3, ttft=0.9)}, quality_debt_s=2.5)
    resumed = PolicyState.initial(VARIANTS).with_learned(json.loads(json.dumps(state.learned())))
    assert resumed.learned() == state.learned()
    assert resumed.mean_output_tokens == pytest.approx(128.0) and resumed.corrections["full"].tpot == 1.3

    fresh = PolicyState.initial(VARIANTS)
    junk = {"long_rate_rps": "fast", "mean_output_tokens": float("nan"), "quality_debt_s": -1,
            "corrections": {"full": [0.0, 1.0], "gone": [1.0, 1.0], "int8": "x"}}
    assert fresh.with_learned(junk) == fresh and fresh.with_learned(None) == fresh


def test_a_resumed_controller_restores_all_the_way_without_traffic() -> None:
    """A degraded split handed over with what the last controller learned, then no traffic at all:
    no latency sample ever comes, and the restore still completes (zero arrivals bound the rate)."""
    degraded = replace(PolicyState.initial(VARIANTS), weights={"full": 0.3, "int8": 0.7, "distilled": 0.0})
    resumed = degraded.with_learned({"mean_output_tokens": 16.0, "long_rate_rps": 0.0})
    state, idle = resumed, LatencyStats()
    for now in np.arange(100.0, 400.0, CTL.interval_s):
        obs = observe(float(now), state, 0.0, {"full": 1, "int8": 1},
                      latency={"full": idle, "int8": idle, "distilled": idle})
        _, state = step(obs, state)
    assert state.weights["full"] == pytest.approx(1.0)

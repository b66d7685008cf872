"""The capacity model (speed curves from the manifest) and the traffic-split arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.slo.capacity import (
    TAIL_P95_OVER_P50,
    Correction,
    SpeedCurve,
    capacities,
    replica_capacity,
)
from deployments.slo.plan import (
    blend_to_floor,
    plan_for,
    plan_weights,
    step_toward,
    total_variation,
    traffic_quality,
)
from deployments.slo.settings import VariantBounds
from inference.schema.config import SLOConfig, SLOTarget
from inference.schema.manifest import SpeedProfile, VariantManifest

EXAMPLE = Path(__file__).parents[2] / "load_tests" / "traces" / "example_manifest.json"


def test_speed_curve_interpolates_and_saturates() -> None:
    curve = SpeedCurve.from_profile(
        SpeedProfile(tok_s_bs1=40.0, ttft_ms_p50=50.0, tpot_ms_at={"1": 25.0, "8": 50.0, "32": 100.0})
    )
    assert curve.tpot_s(1) == pytest.approx(0.025)
    assert curve.tpot_s(4.5) == pytest.approx(0.0375)  # halfway between 1 and 8
    assert curve.tpot_s(64) == pytest.approx(0.2)  # past the last level: throughput flat
    assert curve.tok_s(32) == pytest.approx(320.0)
    assert curve.ttft_s(8) == pytest.approx(0.1)  # TTFT scales with TPOT
    assert curve.prefill_steps == pytest.approx(2.0)


def test_speed_curve_uses_measured_ttft_by_concurrency() -> None:
    curve = SpeedCurve.from_profile(SpeedProfile(
        tok_s_bs1=40.0, tpot_ms_at={"1": 25.0, "8": 50.0}, ttft_ms_p50=30.0, ttft_ms_at={"1": 30.0, "8": 90.0}))
    assert curve.ttft_s(1) == pytest.approx(0.03)
    assert curve.ttft_s(4.5) == pytest.approx(0.06)
    assert curve.ttft_s(16) == pytest.approx(0.09 * curve.tpot_s(16) / curve.tpot_s(8))


def test_speed_curve_from_throughput_only() -> None:
    curve = SpeedCurve.from_profile(SpeedProfile(tok_s_bs1=40.0, tok_s_at={"16": 320.0}))
    assert curve.tpot_s(1) == pytest.approx(1 / 40.0)
    assert curve.tpot_s(16) == pytest.approx(16 / 320.0)


def test_capacity_stops_at_the_first_concurrency_missing_the_slo() -> None:
    curve = SpeedCurve.from_profile(SpeedProfile(tok_s_bs1=40.0, tpot_ms_at={"1": 25.0, "32": 100.0}))
    limits = SLOTarget(tpot_p95_ms=60.0)  # p95 = 1.25 x median <= 60 ms -> median <= 48 ms
    cap = replica_capacity("v", 1.0, curve, limits, max_num_seqs=64, mean_output_tokens=100)
    assert curve.tpot_s(cap.concurrency) * TAIL_P95_OVER_P50 <= 0.060 < curve.tpot_s(cap.concurrency + 1) * 1.25
    assert cap.rps == pytest.approx(cap.concurrency / (curve.ttft_s(cap.concurrency) + 99 * curve.tpot_s(cap.concurrency)))
    slower = replica_capacity("v", 1.0, curve, limits, 64, 100, Correction(tpot=1.5, ttft=1.5))
    assert slower.concurrency < cap.concurrency and slower.rps < cap.rps


def test_strictest_limits_over_classes() -> None:
    slo = SLOConfig(classes={"a": SLOTarget(ttft_p95_ms=500.0), "b": SLOTarget(ttft_p95_ms=800.0, e2e_p95_ms=9000.0)},
                    default_class="a")
    assert SLOTarget.strictest(slo.classes.values()) == SLOTarget(ttft_p95_ms=500.0, e2e_p95_ms=9000.0)


def test_example_manifest_orders_variants_by_speed() -> None:
    manifest = VariantManifest.load(EXAMPLE)
    caps = capacities(manifest, [VariantBounds(name=v.name) for v in manifest.variants], SLOConfig())
    assert caps["full"].rps < caps["int8"].rps < caps["distilled"].rps
    assert caps["distilled"].quality == pytest.approx(0.7)


def test_plan_weights_fills_best_quality_first() -> None:
    quality = {"full": 1.0, "int8": 0.95, "distilled": 0.7}
    safe = {"full": 2.0, "int8": 3.0, "distilled": 4.0}
    raw = {n: v / 0.8 for n, v in safe.items()}
    weights = plan_weights(4.0, safe, raw, quality)
    assert weights == pytest.approx({"full": 0.5, "int8": 0.5, "distilled": 0.0})
    assert plan_weights(1.0, safe, raw, quality)["full"] == pytest.approx(1.0)
    over = plan_weights(20.0, safe, raw, quality)  # beyond all safe capacity: spread by spare raw
    assert sum(over.values()) == pytest.approx(1.0) and over["distilled"] > 0.2
    assert plan_weights(1.0, safe, {"full": 0.0, "int8": 0.0, "distilled": 0.0}, quality) == {}


def test_blend_to_floor_and_step_toward() -> None:
    quality = {"full": 1.0, "distilled": 0.7}
    low = {"full": 0.2, "distilled": 0.8}  # quality 0.76
    both = {"full": 1.0, "distilled": 1.0}
    lifted = blend_to_floor(low, quality, 0.85, both)
    assert traffic_quality(lifted, quality) == pytest.approx(0.85)
    assert blend_to_floor({"full": 1.0, "distilled": 0.0}, quality, 0.85, both) == {"full": 1.0, "distilled": 0.0}
    assert blend_to_floor(low, quality, 0.85, {"distilled": 1.0}) == low  # full cannot serve: nothing to blend
    moved = step_toward(low, {"full": 1.0, "distilled": 0.0}, 0.25)
    assert total_variation(low, moved) == pytest.approx(0.25) and moved["full"] == pytest.approx(0.45)


def test_plan_for_reports_quality_and_overflow() -> None:
    manifest = VariantManifest.load(EXAMPLE)
    caps = capacities(manifest, [VariantBounds(name=v.name) for v in manifest.variants], SLOConfig())
    quality, over = plan_for(1.0, {"full": 1, "int8": 0, "distilled": 0}, caps, 0.8)
    assert quality == 1.0 and over == 0.0
    quality, over = plan_for(10.0, {"full": 1, "int8": 1, "distilled": 0}, caps, 0.8)
    assert over > 0 and 0.95 < quality < 1.0

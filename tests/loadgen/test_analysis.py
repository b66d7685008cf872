"""The pure parts, no server: arrivals, SLO attainment and goodput, switch inference, config rules."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from load_tests.config import GoodputTargets, RunConfig
from load_tests.gen.arrivals import TracePhase, TraceSpec, load_trace, planned_offsets
from load_tests.results.records import ClientRecord, ControllerDecision
from load_tests.results.slo import attainment
from load_tests.results.switches import decision_events, infer_flips


def _ok(i: int, send_s: float, variant: str = "full", ttft: float = 100.0, tpot: float = 10.0) -> ClientRecord:
    return ClientRecord(i, send_s, send_s, variant=variant, ttft_ms=ttft, tpot_ms=tpot, e2el_ms=ttft + 10 * tpot,
                         output_tokens=11, itl_ms=[tpot] * 10)


def _failed(i: int, send_s: float, variant: str = "full") -> ClientRecord:
    return ClientRecord(i, send_s, send_s, status="error", http_status=500, error="HTTP 500", variant=variant)


def test_goodput_counts_failed_requests_as_misses() -> None:
    records = [_ok(0, 0.0), _ok(1, 0.1), _ok(2, 0.2), _ok(3, 0.3, ttft=900.0), _failed(4, 0.4), _failed(5, 0.5)]
    result = attainment(records, GoodputTargets(ttft_ms=500.0, tpot_ms=50.0), duration_s=2.0)
    assert result.num_good == 3
    assert result.overall == pytest.approx(3 / 6)  # the two failures are in the denominator
    assert result.per_metric == {"ttft": pytest.approx(3 / 6), "tpot": pytest.approx(4 / 6)}
    assert result.goodput == pytest.approx(1.5)


def test_poisson_arrivals_have_the_requested_rate_and_are_reproducible() -> None:
    first = list(itertools.islice(planned_offsets(50.0, 1.0, None, seed=7), 2000))
    again = list(itertools.islice(planned_offsets(50.0, 1.0, None, seed=7), 2000))
    assert first == again and first == sorted(first)
    assert 2000 / first[-1] == pytest.approx(50.0, rel=0.1)
    bursty = list(itertools.islice(planned_offsets(50.0, 0.25, None, seed=7), 2000))
    gaps = [b - a for a, b in itertools.pairwise(bursty)]
    mean = sum(gaps) / len(gaps)
    cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
    assert cv > 1.5  # gamma with shape 0.25 has CV 2: burstier than Poisson (CV 1)


def test_trace_gives_step_and_burst_shapes() -> None:
    trace = TraceSpec(phases=[TracePhase(duration_s=20, rate=5), TracePhase(duration_s=10, rate=20, burst=30),
                              TracePhase(duration_s=20, rate=0, rate_end=10)])
    offsets = list(planned_offsets(math.inf, 1.0, trace, seed=1))
    assert trace.total_duration_s == 50
    in_phase = [sum(a <= t < b for t in offsets) for a, b in ((0, 20), (20, 30), (30, 50))]
    assert in_phase[0] == pytest.approx(100, rel=0.3)
    assert in_phase[1] == pytest.approx(200 + 30, rel=0.3)
    assert offsets.count(20.0) == 30  # the burst goes out at once
    assert in_phase[2] == pytest.approx(100, rel=0.3)  # a ramp 0 -> 10 req/s over 20 s
    ramp = [t for t in offsets if t >= 30]
    assert sum(t >= 40 for t in ramp) > 2 * sum(t < 40 for t in ramp)


def test_inferred_flip_is_placed_at_the_changeover() -> None:
    records = [_ok(i, i * 0.1, "full" if i * 0.1 < 2.05 else "int8") for i in range(40)]
    flips = infer_flips(records, window_s=0.5)
    assert len(flips) == 1
    assert (flips[0].old, flips[0].new) == ("full", "int8")
    assert flips[0].time_s == pytest.approx(2.05, abs=0.06)
    assert flips[0].first_new_s == pytest.approx(2.1)


def test_decision_event_reports_time_to_switch_and_failures_during_it() -> None:
    # decided at 2.0 s, but the answers only change over at 2.5 s, with two failures in between
    records = [_ok(i, i * 0.1, "full" if i * 0.1 < 2.45 else "int8") for i in range(40)]
    records[21] = _failed(21, 2.1)
    records[22] = _failed(22, 2.2)
    decisions = [ControllerDecision(0.0, {"full": 1.0}, {"full": 1}, "start"),
                 ControllerDecision(2.0, {"full": 0.2, "int8": 0.8}, {"full": 1, "int8": 2}, "ttft over SLO")]
    (event,) = decision_events(records, decisions, window_s=0.5, duration_s=4.0)
    assert (event.from_variant, event.to_variant, event.is_switch) == ("full", "int8", True)
    assert event.time_to_switch_s == pytest.approx(0.5, abs=0.01)
    assert event.failed_during == 2
    assert event.reason == "ttft over SLO"


def test_run_config_refuses_unbounded_runs_and_remote_targets() -> None:
    with pytest.raises(ValidationError, match="bounded"):
        RunConfig()
    with pytest.raises(ValidationError, match="--max-concurrency"):
        RunConfig(duration_s=5.0)
    with pytest.raises(ValidationError, match="loopback"):
        RunConfig(num_prompts=1, base_url="http://10.1.2.3:8000")
    assert RunConfig(num_prompts=1, base_url="http://10.1.2.3:8000", allow_remote=True).num_prompts == 1
    assert RunConfig(num_prompts=1, base_url="http://[::1]:8000/v1/").root_url == "http://[::1]:8000"
    with pytest.raises(ValidationError, match="--goodput"):
        RunConfig(num_prompts=1, fail_on_slo=True)


def test_simulator_segment_traces_are_read_with_a_scale(tmp_path: Path) -> None:
    path = tmp_path / "step.yaml"
    path.write_text("name: step3x\nunit: full_replica\nduration_s: 30\n"
                    "segments: [{t_s: 0, rate: 0.5}, {t_s: 10, rate: 1.5}, {t_s: 20, rate: 0.5}]\n")
    with pytest.raises(ValueError, match="--trace-scale"):
        load_trace(path)
    trace = load_trace(path, scale=4.0)
    assert trace.name == "step3x" and trace.total_duration_s == 30
    assert [(p.duration_s, p.rate) for p in trace.phases] == [(10, 2.0), (10, 6.0), (10, 2.0)]

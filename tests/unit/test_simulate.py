"""The controller simulator end to end: output structure, trace files, errors, and the issue's
targets — on the labelled example manifest, and on the measured manifest of the packaged model
(`MEASURED_MANIFEST`: cluster/configs/local-slo-manifest.json, served measurements of full,
int8-compute, int8 and distill-20; `MEASURED_CONFIG` lets `full` scale to 3 replicas and starts the
compressed variants from 0), at seeds 0-9."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from load_tests.rate_trace import TraceError, load_rate_trace
from load_tests.sim.cli import main
from load_tests.sim.requests import make_requests

ROOT = Path(__file__).parents[2]
TRACES = ROOT / "load_tests" / "traces"
MEASURED_MANIFEST = ROOT / "cluster" / "configs" / "local-slo-manifest.json"
MEASURED_CONFIG = TRACES / "sim-local-slo.yaml"
MEASURED_SEEDS = range(10)
RAY_SWEEP = ("--ray-sweep", "1,2,4,8,16")  # Ray's default autoscaler at five settings (first seed only: it is slow)
# Targets the policy does not meet at every seed on MEASURED_MANIFEST (see docs/slo-controller.md,
# "The simulator on the AVX2 manifest"): the test fails once one is met at every seed, so the entry is
# removed and the target asserted from then on. Re-measured 2026-12-07 04:24 (AVX2 EPYC kind, fp32,
# served). int8-compute carries 1.17-1.19x full's tokens at 16-32 concurrent there: not enough to
# carry a step on the same replicas, so every step and burst needs a new replica (12 s cold start)
# unless one is kept warm, which costs 2x static-full's replica-seconds under steady load.
OPEN_ON_MEASURED = {
    "step3x": {"sloserve SLO attainment >= 99%", ">= 30% fewer replica-seconds than static-full"},
    "burst": {"sloserve SLO attainment >= 99%"},
    "steady": {"<= 1.1x static-full's replica-seconds"},
}
SHORT_TRACE = """\
name: short-step
unit: full_replica
duration_s: 240
segments:
  - {t_s: 0, rate: 0.5}
  - {t_s: 90, rate: 1.5}
  - {t_s: 180, rate: 0.5}
"""
POLICY_KEYS = {"attainment", "violations", "goodput_rps", "quality", "quality_loss", "replica_seconds",
               "mix_changes_per_hour", "recovery_s", "variant_share", "num_requests", "provisioned"}


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_short_trace_output_structure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "short.yaml"
    trace.write_text(SHORT_TRACE)
    out = tmp_path / "out"
    report = run_json(capsys, "--trace", str(trace), "--out", str(out),
                      "--policies", "sloserve,ray-default,static-full,static-compressed,threshold")
    [summary] = report["traces"]
    assert summary["trace"] == "short-step" and summary["num_requests"] > 100
    assert set(summary["policies"]) == {"sloserve", "ray-default", "static-full", "static-compressed", "threshold"}
    for result in summary["policies"].values():
        assert set(result) >= POLICY_KEYS and 0.0 <= result["attainment"] <= 1.0
    assert summary["policies"]["static-full"]["provisioned"] == {"full": 2}
    assert summary["policies"]["static-compressed"]["provisioned"] == {"distilled": 2}
    assert summary["policies"]["sloserve"]["recovery_s"] is not None  # the trace has a step
    [(up, back)] = summary["policies"]["sloserve"]["mix_changes_per_step"]  # one step: during it, after it
    assert up >= 0 and back >= 0
    assert {t["target"] for t in summary["targets"]} >= {"sloserve SLO attainment >= 99%"}
    assert (out / "short-step.png").stat().st_size > 10_000
    assert (out / "summary.json").is_file() and (out / "short-step-decisions.jsonl").is_file()
    assert report["variants"] == {"full": [1, 4], "int8": [1, 4], "distilled": [0, 4]}


def test_ray_default_sweep_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "short.yaml"
    trace.write_text(SHORT_TRACE)
    assert main(["--trace", str(trace), "--policies", "static-full", "--ray-sweep", "1,16"]) == 0
    out = capsys.readouterr().out
    assert "ray-default sweep vs sloserve" in out  # sloserve is added: the sweep is against it
    assert "ray-default:1 " in out and "ray-default:16 " in out
    assert ">= 5x fewer violations than every ray-default at <= 1.1x replica-s" in out


def test_csv_trace_and_requests_are_reproducible(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("t_s,rps\n0,2\n30,4\n60,0\n")
    trace = load_rate_trace(str(path))
    assert trace.unit == "rps" and trace.duration_s == 60 and trace.segments == ((0.0, 2.0), (30.0, 4.0))
    assert trace.steps() == [(30.0, 60.0)]
    first, again = make_requests(trace, {"interactive": 1.0}, 7), make_requests(trace, {"interactive": 1.0}, 7)
    assert first == again and 120 < len(first) < 240


def test_bad_traces_fail_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TraceError, match="unknown trace"):
        load_rate_trace("no-such-trace")
    bad = tmp_path / "bad.yaml"
    bad.write_text("unit: rps\nduration_s: 10\nsegments: [{t_s: 5, rate: 1}]\n")
    assert main(["--trace", str(bad), "--policies", "sloserve"]) == 2
    assert "start at t_s 0" in capsys.readouterr().err


@pytest.mark.parametrize("trace", ["step3x", "burst"])
def test_main_targets_on_the_example_manifest(trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "--trace", trace, "--policies", "sloserve,static-full,static-compressed", "--seed", "1")
    [summary] = report["traces"]
    checks = {c["target"]: c["met"] for c in summary["targets"]}
    assert checks["sloserve SLO attainment >= 99%"]
    assert checks["quality loss <= 1/3 of static-compressed's"]
    assert checks[">= 30% fewer replica-seconds than static-full"]


def test_steady_trace_is_constant_for_an_hour() -> None:
    trace = load_rate_trace("steady")
    assert trace.duration_s == 3600 and len(trace.segments) == 1 and trace.steps() == []


@pytest.mark.parametrize("trace", ["steady", "steady-noisy"])
def test_steady_keeps_the_variant_mix(trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "--trace", trace, "--policies", "sloserve")
    [check] = report["traces"][0]["targets"]
    assert check["target"] == "<= 4 variant-mix changes per hour" and check["met"]


@pytest.mark.parametrize("trace", ["step3x", "burst", "steady"])
def test_targets_on_the_measured_manifest(trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every seed of MEASURED_SEEDS: one lucky arrival sequence is not a met target. The comparison
    with Ray's default autoscaler runs at the first seed."""
    missed_by_seed: dict[int, dict[str, str]] = {}
    for seed in MEASURED_SEEDS:
        report = run_json(capsys, "--trace", trace, "--manifest", str(MEASURED_MANIFEST), "--config",
                          str(MEASURED_CONFIG), "--policies", "sloserve,static-full,static-compressed",
                          "--seed", str(seed), *RAY_SWEEP * (seed == MEASURED_SEEDS[0]))
        checks = {c["target"].split(" (sloserve")[0]: c for c in report["traces"][0]["targets"] if c["primary"]}
        still_open = OPEN_ON_MEASURED.get(trace, set())
        assert still_open <= set(checks)  # the open targets are still checked by these names
        missed = {t: c["value"] for t, c in checks.items() if not c["met"]}
        assert not set(missed) - still_open, f"seed {seed}: targets missed on {MEASURED_MANIFEST.name}: {missed}"
        missed_by_seed[seed] = missed
    now_met = OPEN_ON_MEASURED.get(trace, set()) - {t for m in missed_by_seed.values() for t in m}
    assert not now_met, f"now met at every seed, remove from OPEN_ON_MEASURED: {now_met}"
    if any(missed_by_seed.values()):
        pytest.xfail(f"open on {MEASURED_MANIFEST.name}: {missed_by_seed}")

"""The soak's pure parts (fault plan, attribution, RSS growth, verdict) and its bounded requests
against the mock server: ok, error, hung past the deadline, and the capacity ramp."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from load_tests.gen.client import RequestSpec, Target
from load_tests.gen.prompts import synthetic_prompts
from load_tests.soak.plan import SoakConfig, fault_plan, kill_times
from load_tests.soak.traffic import measure_capacity, send_bounded
from load_tests.soak.verdict import Fault, Outcome, RssSample, build_report, rss_growth
from tests.loadgen.conftest import MockServer

WHOLE = [{"full": {"num_free_blocks": 128, "num_blocks": 128}}]


def test_fifteen_minutes_every_150_s_gives_five_kills_and_a_redeploy_between_two() -> None:
    config = SoakConfig(duration_s=900, kill_every_s=150)
    assert kill_times(config) == [150, 300, 450, 600, 750]
    plan = [(e.kind, e.at_s) for e in fault_plan(config)]
    assert ("redeploy", 525.0) in plan and len(plan) == 6


def test_explicit_times_and_bad_combinations() -> None:
    config = SoakConfig(duration_s=60, kill_at_s=[20], redeploy_at_s=35)
    assert [(e.kind, e.at_s) for e in fault_plan(config)] == [("kill", 20), ("redeploy", 35)]
    with pytest.raises(ValueError, match="every kill must be inside the run"):
        SoakConfig(duration_s=60, kill_at_s=[70])
    with pytest.raises(ValueError, match="needs --ray-address"):
        SoakConfig(base_url="http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="only loopback"):
        SoakConfig(base_url="http://10.1.2.3:8000", ray_address="10.1.2.3:6379")


def _report(outcomes: list[Outcome], faults: list[Fault], kv: list[dict] = WHOLE,  # type: ignore[type-arg]
            rss: list[RssSample] | None = None) -> dict:  # type: ignore[type-arg]
    return build_report(outcomes, faults, rss or [], kv, warmup_s=10, max_rss_growth_pct=5, duration_s=60)


def test_only_errors_a_kill_explains_are_attributed_and_429s_are_shed_load() -> None:
    kill = Fault("kill", 20.0, 20.0, "SERVE_REPLICA::sloserve#llm-full#a")
    outcomes = [
        Outcome(0, 1.0, 2.0, "ok"),
        Outcome(1, 19.0, 20.5, "error", "stream error: replica died"),  # in flight at the kill
        Outcome(2, 21.0, 22.0, "error", "HTTP 429: bound", http_status=429),  # shed at admission
        Outcome(3, 22.0, 23.0, "error", "stream error: the replica serving this request failed"),  # sent to the dead one
        Outcome(4, 24.0, 25.0, "error", "HTTP 500: internal error", http_status=500),  # nothing explains it
        Outcome(5, 40.0, 41.0, "error", "stream error: the replica serving this request failed"),  # long after
    ]
    report = _report(outcomes, [kill])
    assert report["requests"]["shed_429"] == 1 and report["requests"]["errors"] == 4
    assert report["requests"]["errors_in_flight_on_kill"] == 2 and report["requests"]["errors_unattributed"] == 2
    assert report["kills"][0]["in_flight"] == 1
    assert not report["verdict"]["passed"]
    assert any("2 errors not in flight on a killed replica" in f for f in report["verdict"]["failures"])
    assert outcomes[1].attributed_to == outcomes[3].attributed_to == "kill@20.0s"
    assert outcomes[2].attributed_to is None and outcomes[4].attributed_to is None and outcomes[5].attributed_to is None


def test_errors_during_a_redeploy_hung_lost_and_a_broken_pool_each_fail_the_verdict() -> None:
    redeploy = Fault("redeploy", 30.0, 40.0, "local.yaml")
    outcomes = [Outcome(0, 31.0, 32.0, "error", "HTTP 500"), Outcome(1, 33.0, None, "hung"),
                Outcome(2, 34.0, 35.0, "lost")]
    broken = [{"full": {"num_free_blocks": 120, "num_blocks": 128}}]
    failures = _report(outcomes, [redeploy], kv=broken)["verdict"]["failures"]
    assert len(failures) == 4, failures
    assert _report([Outcome(0, 1.0, 2.0, "ok")], [redeploy])["verdict"] == {"passed": True, "failures": []}


def test_rss_growth_counts_from_the_warm_sample_of_each_replica() -> None:
    mb = 2**20
    samples = [RssSample(0, "r#a", 100 * mb), RssSample(10, "r#a", 200 * mb), RssSample(50, "r#a", 206 * mb),
               RssSample(40, "r#b", 300 * mb), RssSample(45, "r#b", 300 * mb)]
    rows = {r["replica"]: r for r in rss_growth(samples, warmup_s=10)}
    assert rows["r#a"]["baseline_mb"] == 200 and rows["r#a"]["growth_pct"] == 3.0
    assert "growth_pct" not in rows["r#b"], "not warm yet: no baseline"
    report = _report([Outcome(0, 1.0, 2.0, "ok")], [], rss=[*samples, RssSample(60, "r#a", 220 * mb)])
    assert report["rss"]["max_growth_pct"] == 10.0 and not report["verdict"]["passed"]


def _target(server: MockServer) -> Target:
    return Target(server.url, "completions", "mock", {}, ignore_eos=True)


def test_bounded_requests_end_ok_error_or_hung(start_mock: Callable[..., MockServer]) -> None:
    fast = start_mock("--variants", "full:ttft_ms=5,tpot_ms=1", "--no-controller")
    failing = start_mock("--variants", "full:ttft_ms=5,tpot_ms=1,stream_error_rate=1.0", "--no-controller")
    slow = start_mock("--variants", "full:ttft_ms=5000,tpot_ms=1", "--no-controller")
    spec = RequestSpec(0, 0.0, synthetic_prompts(1, 8, 0)[0], 4)

    async def go() -> list[Outcome]:
        async with httpx.AsyncClient(trust_env=False) as client:
            t0 = time.perf_counter()
            return [await send_bounded(client, _target(s), spec, t0, deadline_s=1.0) for s in (fast, failing, slow)]

    ok, error, hung = asyncio.run(go())
    assert ok.status == "ok" and ok.output_tokens == 4 and ok.end_s is not None
    assert error.status == "error" and "stream error" in (error.error or "")
    assert hung.status == "hung" and hung.end_s is None


def test_capacity_ramp_stops_once_throughput_stops_rising(start_mock: Callable[..., MockServer]) -> None:
    server = start_mock("--variants", "full:ttft_ms=20,tpot_ms=5", "--no-controller", "--max-inflight", "64")

    async def go() -> tuple[float, list]:  # type: ignore[type-arg]
        async with httpx.AsyncClient(trust_env=False) as client:
            return await measure_capacity(client, _target(server), step_s=0.5, max_concurrency=4, output_len=4,
                                          input_len=8, seed=0, deadline_s=5.0, quiet=True)

    capacity, steps = asyncio.run(go())
    assert [s.concurrency for s in steps] == [1, 2, 4]  # the mock scales with concurrency
    assert capacity == max(s.req_s for s in steps) > 0


def test_a_redeploy_counts_shed_load_apart_from_its_errors() -> None:
    redeploy = Fault("redeploy", 30.0, 40.0, "local.yaml")
    outcomes = [Outcome(0, 31.0, 32.0, "error", "HTTP 429: bound", http_status=429),
                Outcome(1, 32.0, 33.0, "ok"), Outcome(2, 33.0, 34.0, "error", "HTTP 500", http_status=500)]
    [entry] = _report(outcomes, [redeploy])["redeploys"]
    assert entry["errors"] == 1 and entry["shed_429"] == 1 and entry["requests_during"] == 3

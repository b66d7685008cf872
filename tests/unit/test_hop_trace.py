"""The hop trace: stamps of one request from several processes join into one chain per request."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.telemetry.hop_trace import HopTrace, engine_ttft_s, hop_breakdown, read_trace
from load_tests.benchmarks.serving import BenchError, Sample, _Clock, _overhead, _summary


def test_trace_off_writes_nothing(tmp_path: Path) -> None:
    trace = HopTrace(None)
    trace.stamp("r", "router.call")
    assert not trace.enabled and list(tmp_path.iterdir()) == []


def test_http_and_handle_chains_are_joined_and_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "hops.jsonl"
    trace = HopTrace(str(path))
    # an HTTP request: its hops under the HTTP id, the router's link to the engine id, then engine hops
    for hop, t in (("client.send", 0.0), ("router.asgi", 0.002), ("router.route", 0.003)):
        trace.stamp("http-1", hop, t)
    trace.stamp("http-1", "router.link", 0.003, engine_id="req-1")
    for hop, t in (("router.call", 0.004), ("replica.received", 0.005), ("engine.arrival", 0.006),
                   ("engine.first_token", 0.056), ("router.first_chunk", 0.058)):
        trace.stamp("req-1", hop, t)
    for hop, t in (("router.first_sse", 0.0585), ("client.first_token", 0.060)):
        trace.stamp("http-1", hop, t)
    # a handle request: no HTTP hops, keyed by its engine id alone
    for hop, t in (("client.send", 1.0), ("router.call", 1.001), ("engine.arrival", 1.002), ("engine.first_token", 1.032)):
        trace.stamp("req-2", hop, t)
    records = read_trace(path)

    http = hop_breakdown(records, http=True)
    assert http["client.send -> router.asgi"] == pytest.approx(2.0)
    assert http["router.first_sse -> client.first_token"] == pytest.approx(1.5)
    assert "router.asgi" not in " ".join(hop_breakdown(records, http=False))
    assert hop_breakdown(records, http=False)["router.call -> engine.arrival"] == pytest.approx(1.0)
    assert engine_ttft_s(records) == pytest.approx({"http-1": 0.050, "req-2": 0.030})


def test_bench_counts_by_the_engines_tokens_and_refuses_a_wrong_count() -> None:
    clock = _Clock()
    clock.output()
    clock.output()
    assert clock.sample("http", 2, 2, None).tokens == 2
    with pytest.raises(BenchError, match="http: the engine counted 3"):
        clock.sample("http", 3, 2, None)


def test_overhead_is_checked_per_request_against_the_target() -> None:
    def samples(ttft_s: float, engine_ttft_s: float) -> list[Sample]:
        return [Sample(ttft_s, 0.030, 8, engine_ttft_s)] * 3

    results = {"engine": _summary(samples(0.101, 0.100)), "http": _summary(samples(0.190, 0.150))}
    overhead = _overhead(results, "http")
    assert overhead["ttft_added_ms_p50"] == pytest.approx(89.0)  # mostly a slower prefill, not the path
    assert overhead["ttft_added_ms_p50_per_request"] == pytest.approx(39.0)
    assert overhead["pass"] is False

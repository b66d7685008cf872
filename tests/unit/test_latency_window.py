"""LatencyWindows with a fake clock: percentiles, rates, expiry, per-class stats, bounded memory."""

from __future__ import annotations

import pytest

from deployments.slo.observation import RequestRecord, VariantLoad
from deployments.slo.percentiles import percentile
from deployments.slo.windows import LatencyWindows, summarize


def rec(arrival_s: float, e2e_s: float = 1.0, *, variant: str = "full", cls: str = "interactive",
        ttft_s: float | None = 0.1, tpot_s: float | None = 0.05, ok: bool = True, out: int = 10) -> RequestRecord:
    return RequestRecord(variant, cls, arrival_s, ttft_s, tpot_s, e2e_s, ok, prompt_tokens=100, output_tokens=out)


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 95) == 3.0


def test_snapshot_percentiles_match_constructed_data() -> None:
    windows = LatencyWindows(window_s=30.0, start_s=0.0)
    for i in range(100):  # TTFT 0.01..1.00 s, all arriving within the window
        windows.record(rec(arrival_s=10.0 + i * 0.1, ttft_s=(i + 1) / 100.0, tpot_s=0.02 + i / 1000.0))
    stats = windows.snapshot(now_s=25.0).variants["full"].latency
    assert stats.num_requests == 100
    assert stats.ttft_p50_s == pytest.approx(0.505)
    assert stats.ttft_p95_s == pytest.approx(0.9505)
    assert stats.ttft_p99_s == pytest.approx(0.9901)
    assert stats.tpot_p50_s == pytest.approx(0.0695)
    assert stats.mean_output_tokens == 10


def test_old_samples_expire() -> None:
    windows = LatencyWindows(window_s=30.0, start_s=0.0)
    windows.record(rec(arrival_s=0.0, ttft_s=5.0))  # slow, early
    for i in range(10):
        windows.record(rec(arrival_s=40.0 + i, ttft_s=0.1))
    stats = windows.snapshot(now_s=55.0).variants["full"].latency
    assert stats.num_requests == 10
    assert stats.ttft_p99_s == pytest.approx(0.1)
    assert windows.snapshot(now_s=200.0).variants["full"].latency.num_requests == 0


def test_latency_counts_requests_that_arrived_in_the_window_lengths_those_that_ended() -> None:
    windows = LatencyWindows(window_s=30.0, start_s=0.0)
    windows.record(rec(arrival_s=5.0, e2e_s=50.0, ttft_s=9.0, out=400))  # arrived before the window, ended in it
    windows.record(rec(arrival_s=50.0, e2e_s=2.0, ttft_s=0.1, out=100))
    stats = windows.snapshot(now_s=60.0).variants["full"].latency
    assert stats.num_requests == 1 and stats.ttft_p95_s == pytest.approx(0.1)
    assert stats.mean_output_tokens == pytest.approx(250.0)  # both ended in the window


def test_rates_over_window_and_recent_window() -> None:
    windows = LatencyWindows(window_s=30.0, recent_window_s=5.0, start_s=0.0)
    for i in range(30):  # 1 rps for 30 s ...
        windows.record_arrival("full", "interactive", float(i))
    for i in range(20):  # ... then 4 rps for 5 s
        windows.record_arrival("full", "interactive", 30.0 + i * 0.25)
    for i in range(15):
        windows.record(rec(arrival_s=20.0 + i, e2e_s=1.0))  # ends 21..35
    seen = windows.snapshot(now_s=35.0).variants["full"]
    assert seen.arrival_rate_rps == pytest.approx(45 / 30.0)  # stamps in [5, 35]
    assert seen.recent_arrival_rate_rps == pytest.approx(20 / 5.0)
    assert seen.completion_rate_rps == pytest.approx(15 / 30.0)


def test_rates_right_after_start_divide_by_the_time_seen() -> None:
    windows = LatencyWindows(window_s=30.0, start_s=100.0)
    for i in range(10):
        windows.record_arrival("int8", "batch", 100.0 + i * 0.5)
    assert windows.snapshot(now_s=105.0).variants["int8"].arrival_rate_rps == pytest.approx(2.0)


def test_arrivals_fall_back_to_finished_requests_when_not_reported() -> None:
    windows = LatencyWindows(window_s=10.0, start_s=0.0)
    for i in range(20):
        windows.record(rec(arrival_s=i * 0.5, e2e_s=0.2))
    assert windows.snapshot(now_s=10.0).variants["full"].arrival_rate_rps == pytest.approx(2.0)


def test_per_class_stats_errors_and_replica_stats() -> None:
    windows = LatencyWindows(window_s=30.0, start_s=0.0)
    windows.record(rec(1.0, cls="interactive", ttft_s=0.2))
    windows.record(rec(2.0, cls="batch", ttft_s=3.0, e2e_s=20.0))
    windows.record(rec(3.0, cls="batch", ok=False, ttft_s=None, tpot_s=None))
    replicas = {"full": VariantLoad(num_replicas_running=2, num_replicas_ready=1, queue_depth=3, num_ongoing=8)}
    seen = windows.snapshot(now_s=25.0, replicas=replicas, variants=["int8"])
    full = seen.variants["full"]
    assert set(full.by_class) == {"interactive", "batch"}
    assert full.by_class["batch"].num_errors == 1 and full.by_class["batch"].error_rate == pytest.approx(0.5)
    assert full.by_class["interactive"].ttft_p95_s == pytest.approx(0.2)
    assert full.replicas.queue_depth == 3
    assert seen.variants["int8"].latency.num_requests == 0  # named, never seen


def test_memory_is_bounded() -> None:
    windows = LatencyWindows(window_s=1000.0, max_samples=50, max_arrivals=100, start_s=0.0)
    for i in range(1000):
        windows.record_arrival("full", "interactive", i * 0.1)
        windows.record(rec(i * 0.1, e2e_s=0.05))
    seen = windows.snapshot(now_s=100.0).variants["full"]
    assert seen.latency.num_requests == 50
    assert seen.arrival_rate_rps == pytest.approx(10.0, rel=0.02)  # 100 kept stamps over their own span


def test_summarize_of_nothing_is_empty() -> None:
    assert summarize([]).num_requests == 0 and summarize([]).ttft_p95_s is None


def test_bad_bounds_raise() -> None:
    with pytest.raises(ValueError, match="window_s"):
        LatencyWindows(window_s=0.0)


def test_mean_e2e_counts_every_request_that_ended_in_the_window() -> None:
    """Little's law (completions x mean time in system) needs every request that ended in the window,
    not only those that also arrived in it: those are the short ones. Here half the requests last 25 s
    (arrived before the 20-s window) and half 2 s; the percentiles keep only the latter."""
    windows = LatencyWindows(window_s=20.0, start_s=0.0)
    for i in range(10):
        windows.record(rec(arrival_s=5.0 + i * 0.5, e2e_s=25.0))  # arrived before the horizon (10 s)
        windows.record(rec(arrival_s=20.0 + i, e2e_s=2.0))
    stats = windows.snapshot(now_s=30.0).variants["full"].latency
    assert stats.num_requests == 10 and stats.e2e_p50_s == pytest.approx(2.0)  # the window's own requests
    assert stats.e2e_mean_s == pytest.approx(13.5)  # (10 x 25 + 10 x 2) / 20; only the short ones gave 2.0

"""Streaming timing against the mock: TTFT, TPOT and ITL match its configured latencies.

The mock sends an empty role chunk at once, the first content `ttft_ms` after the request and each
later token `tpot_ms` after the previous one; measured values may only be a little above (HTTP and
scheduling overhead on a busy 2-core machine), never at the empty chunk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loadgen.conftest import MockServer, load_records, load_summary, mock_server, run_tool

TTFT_MS, TPOT_MS = 120.0, 15.0


@pytest.fixture(scope="module")
def steady_mock() -> MockServer:
    with mock_server("--variants", f"full:ttft_ms={TTFT_MS:g},tpot_ms={TPOT_MS:g}") as server:
        yield server


def _close(measured: float, configured: float, rel: float = 0.15, abs_ms: float = 25.0) -> bool:
    """Within the overhead allowed: not below the configured value (minus 2 ms), not far above."""
    return configured - 2.0 <= measured <= configured * (1 + rel) + abs_ms


def test_ttft_and_tpot_match_the_configured_latencies(steady_mock: MockServer, tmp_path: Path) -> None:
    rc = run_tool("run", "--base-url", steady_mock.url, "--num-prompts", "12", "--request-rate", "20",
                  "--max-concurrency", "4", "--output-len", "20", "--no-plots", "--result-dir", str(tmp_path))
    assert rc == 0
    summary = load_summary(tmp_path)
    assert summary["completed"] == 12 and summary["failed"] == 0
    assert _close(summary["median_ttft_ms"], TTFT_MS), summary["median_ttft_ms"]
    assert _close(summary["median_tpot_ms"], TPOT_MS, abs_ms=3.0), summary["median_tpot_ms"]
    assert _close(summary["median_itl_ms"], TPOT_MS, abs_ms=5.0), summary["median_itl_ms"]
    assert summary["variants"]["full"]["completed"] == 12
    for r in load_records(tmp_path):
        assert r["output_tokens"] == 20 and r["token_source"] == "usage"
        assert len(r["itl_ms"]) == 19  # gaps after the first content chunk only: the TTFT is not one
        assert sum(r["itl_ms"]) <= r["e2el_ms"] - r["ttft_ms"] + 1e-6  # they span first to last content
        tpot = (r["e2el_ms"] - r["ttft_ms"]) / (r["output_tokens"] - 1)
        assert r["tpot_ms"] == pytest.approx(tpot)


def test_per_token_itl_splits_multi_token_chunks(start_mock, tmp_path: Path) -> None:
    mock = start_mock("--variants", "chunky:ttft_ms=60,tpot_ms=10,tokens_per_chunk=4")
    rc = run_tool("run", "--base-url", mock.url, "--endpoint", "completions", "--num-prompts", "6",
                  "--max-concurrency", "3", "--output-len", "16", "--no-plots", "--result-dir", str(tmp_path))
    assert rc == 0
    summary = load_summary(tmp_path)
    assert summary["completed"] == 6
    assert _close(summary["median_ttft_ms"], 60.0 + 30.0)  # the first chunk holds tokens 0-3
    assert _close(summary["median_itl_ms"], 40.0, abs_ms=6.0)  # one chunk = 4 tokens
    assert _close(summary["median_itl_per_token_ms"], 10.0, abs_ms=2.0)
    # TPOT = (E2E - TTFT) / (tokens - 1): 3 later chunks of 40 ms over 15 tokens
    assert _close(summary["median_tpot_ms"], 8.0, abs_ms=2.0)
    assert all(len(r["itl_ms"]) == 3 for r in load_records(tmp_path))

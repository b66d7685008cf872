"""Against the mock: failed and rejected requests count as SLO misses; a scheduled variant switch
is found with its time, from /controller/decisions and, without a controller, from the answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loadgen.conftest import load_records, load_summary, run_tool

SWITCH_AT_S = 1.5  # the mock's schedule counts from the first request it receives
MOCK_TTFT_MS = {"full": 40.0, "int8": 20.0}


def _server_lag_s(records: list[dict]) -> float:
    """How far the mock fell behind (TTFT over its set value): on a busy machine it handles requests
    later than they were sent, and chooses their variant by its own clock."""
    return max(r["ttft_ms"] - MOCK_TTFT_MS[r["variant"]] for r in records if r["status"] == "ok") / 1000.0


def test_goodput_counts_errors_and_429s_as_misses(start_mock, tmp_path: Path) -> None:
    mock = start_mock("--variants", "full:ttft_ms=30,tpot_ms=5,error_rate=0.3,stream_error_rate=0.5",
                      "--max-inflight", "3")
    rc = run_tool("run", "--base-url", mock.url, "--num-prompts", "30", "--request-rate", "60",
                  "--output-len", "8", "--goodput", "ttft:1000", "tpot:100", "--no-plots",
                  "--result-dir", str(tmp_path))
    assert rc == 0
    s = load_summary(tmp_path)
    records = load_records(tmp_path)
    assert s["failed"] > 0 and s["completed"] > 0
    # 3 in flight at 60 req/s of ~65 ms: rejections occur, as do errors before and during the stream
    assert set(s["errors"]) == {"HTTP 500", "HTTP 429", "stream error"}
    assert s["num_good"] == s["completed"]  # every success met the loose SLO ...
    assert s["slo_attainment"] == pytest.approx(s["completed"] / 30)  # ... but failures are misses
    assert s["slo_attainment_ttft"] == pytest.approx(s["completed"] / 30)
    assert s["request_goodput"] == pytest.approx(s["completed"] / s["duration"])
    rejected = [r for r in records if r["http_status"] == 429]
    assert all(r["retry_after_s"] == 1.0 for r in rejected)
    failed_500 = [r for r in records if r["http_status"] == 500]
    assert all(r["variant"] == "full" for r in failed_500)  # the variant header comes with errors too
    assert s["variants"]["full"]["failed"] == len(failed_500) + s["errors"]["stream error"]


def _switch_run(mock_url: str, result_dir: Path) -> tuple[dict, list[dict]]:
    rc = run_tool("run", "--base-url", mock_url, "--request-rate", "25", "--duration", "3",
                  "--output-len", "4", "--window-s", "0.5", "--seed", "3", "--no-plots",
                  "--result-dir", str(result_dir))
    assert rc == 0
    return load_summary(result_dir), load_records(result_dir)


def test_scheduled_switch_is_read_from_the_controller_decisions(start_mock, tmp_path: Path) -> None:
    mock = start_mock("--variants", "full:ttft_ms=40,tpot_ms=5", "int8:ttft_ms=20,tpot_ms=3",
                      "--schedule", "0:full", f"{SWITCH_AT_S}:int8")  # ttft_ms as in MOCK_TTFT_MS
    s, records = _switch_run(mock.url, tmp_path)
    first_send = min(r["send_s"] for r in records)
    assert s["switch_events_source"] == "controller"
    (event,) = s["switch_events"]
    assert (event["from_variant"], event["to_variant"], event["is_switch"]) == ("full", "int8", True)
    assert event["time_s"] == pytest.approx(first_send + SWITCH_AT_S, abs=0.15 + _server_lag_s(records))
    assert 0.0 <= event["time_to_switch_s"] < 0.5  # the next request after the decision goes to int8
    assert event["failed_during"] == 0
    assert s["num_switches"] == 1
    assert {"full", "int8"} <= set(s["variants"])


def test_switch_is_inferred_from_the_answers_without_a_controller(start_mock, tmp_path: Path) -> None:
    mock = start_mock("--variants", "full:ttft_ms=40,tpot_ms=5", "int8:ttft_ms=20,tpot_ms=3",
                      "--schedule", "0:full", f"{SWITCH_AT_S}:int8", "--no-controller")
    s, records = _switch_run(mock.url, tmp_path)
    first_send = min(r["send_s"] for r in records)
    assert s["switch_events_source"] == "inferred"
    (event,) = s["switch_events"]
    assert (event["from_variant"], event["to_variant"]) == ("full", "int8")
    assert event["time_s"] == pytest.approx(first_send + SWITCH_AT_S, abs=0.2 + _server_lag_s(records))

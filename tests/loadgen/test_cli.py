"""The command line: --fail-on-slo exit codes, bounded runs stop on time, clear usage errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.loadgen.conftest import REPO, MockServer, load_records, load_summary, mock_server, run_tool


@pytest.fixture(scope="module")
def fast_mock() -> MockServer:
    with mock_server("--variants", "full:ttft_ms=20,tpot_ms=2") as server:
        yield server


@pytest.mark.parametrize(("ttft_slo_ms", "expected"), [(1, 1), (5000, 0)])
def test_fail_on_slo_exits_1_on_a_miss_and_0_otherwise(fast_mock: MockServer, ttft_slo_ms: int,
                                                      expected: int, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_tool("run", "--base-url", fast_mock.url, "--num-prompts", "5", "--output-len", "4",
                  "--goodput", f"ttft:{ttft_slo_ms}", "--fail-on-slo")
    assert rc == expected
    assert ("SLO check FAILED" if expected else "SLO check passed") in capsys.readouterr().out


def test_fail_on_slo_honours_the_attainment_target(fast_mock: MockServer) -> None:
    # every request meets e2el:5000 but none meets ttft:1 -> attainment 0 < 0.5
    assert run_tool("run", "--base-url", fast_mock.url, "--num-prompts", "4", "--output-len", "2",
                    "--goodput", "e2el:5000", "--fail-on-slo", "--slo-target", "0.5") == 0
    assert run_tool("run", "--base-url", fast_mock.url, "--num-prompts", "4", "--output-len", "2",
                    "--goodput", "ttft:1", "e2el:5000", "--fail-on-slo", "--slo-target", "0.5") == 1


def test_bounded_run_stops_on_time_and_cancels_stragglers(start_mock, tmp_path: Path) -> None:
    slow = start_mock("--variants", "slow:ttft_ms=50,tpot_ms=200")  # 100 tokens = 20 s a request
    began = time.monotonic()
    rc = run_tool("run", "--base-url", slow.url, "--duration", "1.5", "--request-rate", "4",
                  "--output-len", "100", "--drain-timeout", "0.5", "--no-plots", "--result-dir", str(tmp_path))
    elapsed = time.monotonic() - began
    assert rc == 0
    assert elapsed < 1.5 + 0.5 + 2.0, elapsed  # send window + drain + setup and writing
    records = load_records(tmp_path)
    assert records and all(r["send_s"] < 1.6 for r in records)
    assert all(r["status"] == "cancelled" for r in records)
    assert load_summary(tmp_path)["num_cancelled"] == len(records)


def test_closed_loop_run_bounded_by_duration(fast_mock: MockServer, tmp_path: Path) -> None:
    rc = run_tool("run", "--base-url", fast_mock.url, "--duration", "1", "--max-concurrency", "2",
                  "--output-len", "4", "--no-plots", "--result-dir", str(tmp_path))
    assert rc == 0
    summary = load_summary(tmp_path)
    assert summary["max_concurrent_requests"] <= 2
    assert summary["completed"] > 10 and summary["duration"] < 2.0
    assert summary["mean_send_lag_ms"] < 20  # waiting for a free slot is not the client falling behind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--base-url", "http://10.9.8.7:8000", "--num-prompts", "1"], "--allow-remote"),
    (["--request-rate", "5"], "must be bounded"),
    (["--num-prompts", "1", "--goodput", "ttft=5"], "--goodput takes"),
    (["--num-prompts", "1", "--fail-on-slo"], "--fail-on-slo needs --goodput"),
    (["--num-prompts", "1", "--trace", "/nonexistent/trace.yaml"], "cannot read trace"),
    (["--num-prompts", "1", "--header", "novalue"], "--header takes"),
])
def test_usage_errors_exit_2_with_a_clear_message(args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run_tool("run", *args) == 2
    assert message in capsys.readouterr().err


def test_no_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_tool("run", "--port", str(_free_port()), "--num-prompts", "1", "--ready-check-timeout-sec", "0.5")
    assert rc == 2
    assert "no OpenAI-compatible server answering" in capsys.readouterr().err


def test_ctrl_c_stops_early_and_keeps_what_was_measured(fast_mock: MockServer, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "load_tests", "run", "--base-url", fast_mock.url, "--duration", "60",
         "--request-rate", "10", "--output-len", "4", "--no-plots", "--result-dir", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("load test:")  # printed as the load starts
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    summary = load_summary(tmp_path)
    assert summary["interrupted"] is True
    assert 0 < summary["num_requests"] < 100 and summary["duration"] < 20

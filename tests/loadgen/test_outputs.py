"""Result files: they exist and parse, the PNGs are valid images, and report / compare / sweep work.

One traced run (a step in the rate, a scheduled switch) against the mock makes the result
directory the tests read.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest
from PIL import Image

from load_tests.results.analysis import PLOTS
from tests.loadgen.conftest import MockServer, load_records, load_summary, mock_server, run_tool

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRACE = """\
name: step-up
phases:
  - {duration_s: 1.0, rate: 10}
  - {duration_s: 1.0, rate: 30, burst: 5}
"""


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    with mock_server("--variants", "full:ttft_ms=40,tpot_ms=5", "int8:ttft_ms=20,tpot_ms=3,error_rate=0.1",
                     "--schedule", "0:full", "1:int8") as server:
        yield server


@pytest.fixture(scope="module")
def result_dir(mock: MockServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    (root / "trace.yaml").write_text(TRACE)
    rc = run_tool("run", "--base-url", mock.url, "--trace", str(root / "trace.yaml"), "--output-len", "6",
                  "--goodput", "ttft:200", "tpot:20", "--metric-percentiles", "50,99",
                  "--metadata", "commit=abc", "--label", "ci", "--result-dir", str(root / "out"))
    assert rc == 0
    return root / "out"


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as img:
        img.verify()
    assert matplotlib.image.imread(path).shape[0] > 100


def test_result_files_exist_and_parse(result_dir: Path) -> None:
    summary = load_summary(result_dir)
    for key in ("completed", "failed", "duration", "request_throughput", "output_throughput",
                "total_token_throughput", "request_goodput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
                "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p99_e2el_ms", "max_concurrent_requests",
                "slo_attainment", "slo_attainment_ttft", "variants", "switch_events", "run"):
        assert key in summary, key
    assert summary["trace"] == "step-up" and summary["label"] == "ci"
    assert summary["metadata"] == {"commit": "abc"}
    assert set(summary["variants"]) >= {"full", "int8"}
    records = load_records(result_dir)
    assert len(records) == summary["num_requests"] == summary["completed"] + summary["failed"]
    assert 30 <= len(records) <= 75  # about 10 + 30 + 5 planned
    assert sum(r["planned_send_s"] >= 1.0 for r in records) > sum(r["planned_send_s"] < 1.0 for r in records)
    with (result_dir / "timeseries.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"all", "full", "int8"} <= {r["variant"] for r in rows}
    assert {"window_start_s", "offered_rate", "p99_ttft_ms", "slo_attainment", "goodput"} <= set(rows[0])


def test_plots_are_valid_png_images(result_dir: Path) -> None:
    for name in PLOTS:
        assert_valid_png(result_dir / name)


def test_report_re_renders_with_other_slo_targets(result_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(result_dir, copy)
    for name in PLOTS:
        (copy / name).unlink()
    assert run_tool("report", str(copy), "--goodput", "ttft:1") == 0
    summary = load_summary(copy)
    assert summary["slo"] == {"ttft_ms": 1.0} and summary["slo_attainment"] == 0.0
    assert summary["completed"] == load_summary(result_dir)["completed"]
    for name in PLOTS:
        assert_valid_png(copy / name)


def test_compare_puts_two_runs_side_by_side(result_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run_tool("compare", str(result_dir), str(result_dir), "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "p99_ttft_ms" in out and "--- int8" in out
    result = json.loads((tmp_path / "compare.json").read_text())
    assert result["overall"]["completed"]["change"] == 0.0
    assert_valid_png(tmp_path / "compare.png")


def test_report_on_a_non_result_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_tool("report", str(tmp_path)) == 2
    assert "a load_tests result directory?" in capsys.readouterr().err


def test_sweep_runs_each_rate_and_plots_the_curve(mock: MockServer, tmp_path: Path) -> None:
    rc = run_tool("sweep", "--request-rates", "10,40", "--base-url", mock.url, "--num-prompts", "8",
                  "--output-len", "4", "--goodput", "ttft:500", "--no-plots", "--result-dir", str(tmp_path))
    assert rc == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["point"] for r in rows] == ["rate-10", "rate-40"]
    assert rows[1]["offered_rate"] > rows[0]["offered_rate"]
    assert (tmp_path / "rate-10" / "summary.json").is_file()
    assert_valid_png(tmp_path / "sweep.png")

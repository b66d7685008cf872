"""`sloserve up` with the default config serves the packaged SmolLM2 as `full` and `int8-compute`
with the SLO controller on; `sloserve status` shows the controller; Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

from load_tests.sloserve_process import sloserve_up, start, wait_for_output
from tests.e2e.test_packaged_model import ONE_WORD_QUESTION  # a margin every dtype auto may pick resolves
from tests.serve.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_sloserve_up_serves_the_packaged_model_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    with sloserve_up("cluster/configs/local.yaml", port, log) as proc:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        ids = {m.id for m in client.models.list().data}
        assert {"smollm2-135m-instruct:full", "smollm2-135m-instruct:int8-compute"} <= ids
        answer = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=ONE_WORD_QUESTION,
            max_tokens=32, temperature=0,
        )
        assert "Paris" in answer.choices[0].message.content
        assert answer.model == "smollm2-135m-instruct:full"
        compressed = client.chat.completions.create(
            model="smollm2-135m-instruct:int8-compute",
            messages=ONE_WORD_QUESTION,
            max_tokens=32, temperature=0,
        )
        assert "Paris" in compressed.choices[0].message.content
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"
        _bounded_load_test(port, tmp_path / "load")
        status = subprocess.run([sys.executable, "-m", "cluster.cli", "status"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert status.returncode == 0, status.stderr[-2000:]
        assert "slo-controller" in status.stdout and "manifest measured on" in status.stdout, status.stdout
        assert "int8-compute" in status.stdout
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "stopped." in log.read_text()


def _bounded_load_test(port: int, result_dir: Path) -> None:
    """The load-test tool against the real cluster: a short bounded run, every request answered."""
    import json

    run = subprocess.run(
        [sys.executable, "-m", "load_tests", "run", "--port", str(port), "--num-prompts", "8",
         "--max-concurrency", "2", "--output-len", "16", "--input-len", "32", "--no-plots",
         "--result-dir", str(result_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((result_dir / "summary.json").read_text())
    assert summary["completed"] == 8 and summary["failed"] == 0
    assert summary["mean_ttft_ms"] > 0 and summary["output_throughput"] > 0
    records = [json.loads(line) for line in (result_dir / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 8 and {r["variant"] for r in records} <= {"full", "int8-compute"}


def test_ctrl_c_while_deploying_stops_sloserve_up(tmp_path: Path) -> None:
    """A SIGINT while the app deploys stops it too (it was lost inside serve.run's wait, and the
    server came up anyway)."""
    log = tmp_path / "up.log"
    proc = start("cluster/configs/local.yaml", free_port(), log)
    try:
        wait_for_output(proc, log, "deploying", timeout_s=120, poll_s=0.5)
        time.sleep(2.0)  # inside serve.run, before the replicas are ready
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "interrupted while deploying" in text and "stopped." in text, text[-3000:]
    assert "sloserve is serving" not in text

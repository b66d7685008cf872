"""A 60 s soak on a tiny random model: `python -m load_tests soak` starts its own Ray and app on a
free loopback port, measures capacity, sends Poisson load at 80% of it, kills one serving replica
and redeploys the app in the middle. Nothing may be lost or hang, the only errors are requests in
flight on the killed replica, and every KV pool is whole at the end. (The 15-minute run on the
packaged model is the same command: load_tests/README.md, Soak.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.tiny_models import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]


def _tiny_config(tmp_path: Path) -> Path:
    model = make_tiny_model_dir(tmp_path / "tiny", max_position_embeddings=256)
    engine = {"kv_cache_tokens": 2048, "block_size": 16, "max_num_seqs": 16, "max_num_batched_tokens": 128}
    config = {
        "model": {"source": str(model), "name": "tiny", "max_model_len": 256},
        # two replicas: one keeps serving while the killed one is replaced
        "variants": [{"name": "full", "dtype": "float32", "num_replicas": 2, "max_replicas": 2, "engine": engine}],
        "router": {"max_in_flight": 64, "request_timeout_s": 60},
        "cluster": {"graceful_shutdown_timeout_s": 20},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_60_s_soak_with_a_kill_and_a_redeploy_loses_nothing(tmp_path: Path) -> None:
    result_dir = tmp_path / "soak"
    command = [
        sys.executable, "-m", "load_tests", "soak", "--config", str(_tiny_config(tmp_path)),
        "--duration", "60", "--capacity-step-s", "2", "--max-capacity-concurrency", "4",
        "--kill-at-s", "20", "--redeploy-at-s", "35", "--request-deadline-s", "45",
        "--warmup-s", "10", "--rss-every-s", "5", "--max-rss-growth-pct", "10",
        "--input-len", "16", "--output-len", "16", "--result-dir", str(result_dir),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((result_dir / "soak.json").read_text())
    requests = report["requests"]
    assert requests["sent"] > 100 and requests["ok"] >= 0.9 * requests["sent"], output
    assert requests["lost"] == 0 and requests["hung"] == 0, output
    assert requests["errors_unattributed"] == 0, requests["error_kinds"]
    assert len(report["kills"]) == 1 and report["kills"][0]["error"] is None, report["kills"]
    assert "llm-full" in report["kills"][0]["target"]
    [redeploy] = report["redeploys"]
    assert redeploy["error"] is None and redeploy["errors"] == 0, redeploy
    assert report["kv_pool"]["whole"], report["kv_pool"]
    assert report["capacity"]["measured_req_s"] > 0
    assert abs(report["capacity"]["rate_req_s"] - 0.8 * report["capacity"]["measured_req_s"]) < 0.01
    assert report["verdict"]["passed"], report["verdict"]
    assert run.returncode == 0, output
    lines = (result_dir / "soak_requests.jsonl").read_text().splitlines()
    assert len(lines) == requests["sent"]

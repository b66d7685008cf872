"""Third-party clients we did not write, run unchanged against a real `sloserve up`, the way users run them.

Our own tests send the requests we expect; these clients send what they send. Both run as their own
command lines, in subprocesses, against one `sloserve up` with the default config (the packaged
SmolLM2-135M-Instruct on the CPU), and every request they make must succeed:

- guidellm (a load generator): a short concurrent benchmark on /v1/chat/completions, its default, with
  streaming, `stream_options: {include_usage, continuous_usage_stats}`, `max_completion_tokens` with
  `ignore_eos`, and message content as a list of text parts.
- lm-eval (an evaluation harness): a loglikelihood (multiple_choice) task of our own through
  `local-completions` on /v1/completions: token-id prompts with `echo`, `logprobs` and `max_tokens: 1`.
  It first probes /tokenizer_info and /tokenize, which we do not serve: on the 404 it falls back to
  the Hugging Face tokenizer named by `tokenizer=` (the packaged model's own).

The clients never reach the network: the Hugging Face hub is off, the tokenizer is a local directory.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from load_tests.sloserve_process import sloserve_up
from tests.serve.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
LM_EVAL_TASKS = Path(__file__).resolve().parent / "data" / "lm_eval"
LM_EVAL_TASK = "sloserve_easy_facts"
MODEL = "smollm2-135m-instruct"
CLIENT_TIMEOUT_S = 300
# guidellm's run: 12 synthetic requests, 4 at a time, each exactly 16 output tokens (it asks `ignore_eos`)
GUIDELLM_REQUESTS, GUIDELLM_STREAMS, GUIDELLM_OUTPUT_TOKENS = 12, 4, 16


@dataclass(frozen=True)
class Server:
    port: int
    log: Path
    tokenizer_dir: Path  # the packaged model's converted directory: config, weights, tokenizer files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `sloserve up` (the default config) for both clients; SIGINT stops it, as Ctrl-C would."""
    port = free_port()
    log = tmp_path_factory.mktemp("sloserve-up") / "up.log"
    with sloserve_up("cluster/configs/local.yaml", port, log):
        # resolved only now: the server has converted (and cached) the packaged model by this point
        from inference.model.model_loader import resolve_model_dir

        tokenizer_dir = Path(resolve_model_dir(f"packaged:{MODEL}"))
        yield Server(port=port, log=log, tokenizer_dir=tokenizer_dir)


def _text(stream: str | bytes | None) -> str:
    return stream.decode(errors="replace") if isinstance(stream, bytes) else (stream or "")


def _run_client(name: str, argv: list[str], tmp_path: Path, server: Server) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run a client's command line (offline, bounded); returns the process and, for assertion
    messages, the tails of its stdout and stderr and of the server's log."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        "TQDM_DISABLE": "1",  # progress bars would crowd the output tails below
    }
    command = " ".join(argv)
    try:
        run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name} ran past {CLIENT_TIMEOUT_S} s: {command}\n--- stdout\n{_text(exc.stdout)[-3000:]}"
                    f"\n--- stderr\n{_text(exc.stderr)[-3000:]}\n--- server log\n{server.log.read_text()[-2000:]}")
    tails = (f"{name} exited {run.returncode}: {command}\n--- stdout\n{run.stdout[-3000:]}"
             f"\n--- stderr\n{run.stderr[-3000:]}\n--- server log\n{server.log.read_text()[-2000:]}")
    return run, tails


def test_guidellm_benchmark_completes_every_request(server: Server, tmp_path: Path) -> None:
    report_path = tmp_path / "benchmarks.json"
    run, tails = _run_client("guidellm", [
        sys.executable, "-m", "guidellm", "run",
        "--backend", f"kind=openai_http,target=http://127.0.0.1:{server.port},model={MODEL}",
        "--profile", f"kind=concurrent,streams={GUIDELLM_STREAMS}",
        "--constraint", f"kind=max_requests,count={GUIDELLM_REQUESTS}",
        "--tokenizer", f"kind=huggingface_auto,model={server.tokenizer_dir}",
        "--data", f"kind=synthetic_text,prompt_tokens=64,output_tokens={GUIDELLM_OUTPUT_TOKENS}",
        "--output", f"kind=json,path={report_path}",
        "--disable-console-interactive",
    ], tmp_path, server)
    assert run.returncode == 0, tails
    assert report_path.is_file(), tails

    report = json.loads(report_path.read_text())
    [benchmark] = report["benchmarks"]
    # guidellm exits 0 whatever its requests got: the report says how each one ended
    failed = Counter(f"{status}: {r['info'].get('error')} (request: {r['request_args']})"
                     for status in ("errored", "incomplete") for r in benchmark["requests"][status])
    failures = "\n".join(f"{n} x {failure}" for failure, n in failed.most_common())
    totals = benchmark["metrics"]["request_totals"]
    assert totals == {"successful": GUIDELLM_REQUESTS, "errored": 0, "incomplete": 0, "total": GUIDELLM_REQUESTS}, (
        f"{totals}\nfailed requests:\n{failures[:4000]}\n{tails}")
    assert not failed, failures[:4000]
    state = benchmark["scheduler_state"]
    assert state["successful_requests"] == GUIDELLM_REQUESTS, state
    assert state["errored_requests"] == 0 and state["cancelled_requests"] == 0, state
    assert len(benchmark["requests"]["successful"]) == GUIDELLM_REQUESTS

    # the usage it read from the stream: every request got exactly the tokens it asked for
    output_tokens = benchmark["metrics"]["output_token_count"]["successful"]
    assert output_tokens["total_sum"] == GUIDELLM_REQUESTS * GUIDELLM_OUTPUT_TOKENS > 0, output_tokens
    assert benchmark["metrics"]["prompt_token_count"]["successful"]["min"] > 0


def test_lm_eval_loglikelihood_task_scores_every_choice(server: Server, tmp_path: Path) -> None:
    output_dir = tmp_path / "lm-eval"
    model_args = (f"model={MODEL},base_url=http://127.0.0.1:{server.port}/v1/completions,"
                  f"tokenizer={server.tokenizer_dir},num_concurrent=1,max_retries=1")
    run, tails = _run_client("lm-eval", [
        sys.executable, "-m", "lm_eval", "run",
        "--model", "local-completions",
        "--model_args", model_args,
        "--tasks", LM_EVAL_TASK,
        "--include_path", str(LM_EVAL_TASKS),
        "--output_path", str(output_dir),
        "--log_samples",
    ], tmp_path, server)
    # a refused request ends the run (max_retries=1); lm-eval logs the server's answer before its traceback
    refused = "\n".join(line for line in run.stderr.splitlines() if "API request failed" in line)
    assert run.returncode == 0, f"{refused[:3000]}\n{tails}"
    assert not refused, f"{refused[:3000]}\n{tails}"

    [results_path] = output_dir.glob("**/results_*.json")
    results = json.loads(results_path.read_text())
    task_results: dict[str, Any] = results["results"][LM_EVAL_TASK]
    assert "acc,none" in task_results, task_results
    documents = [json.loads(line) for line in (LM_EVAL_TASKS / f"{LM_EVAL_TASK}.jsonl").read_text().splitlines()]
    assert results["n-samples"][LM_EVAL_TASK] == {"original": len(documents), "effective": len(documents)}

    # every choice of every question came back scored: a loglikelihood, a finite number <= 0
    [samples_path] = output_dir.glob(f"**/samples_{LM_EVAL_TASK}_*.jsonl")
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    assert len(samples) == len(documents)
    for sample in samples:
        scores = [float(loglikelihood) for loglikelihood, _is_greedy in sample["filtered_resps"]]
        assert len(scores) == len(sample["doc"]["choices"]), sample
        assert all(math.isfinite(s) and s <= 0 for s in scores), sample
    # the questions are easy and the margins wide (see the task's YAML): every answer is right
    assert task_results["acc,none"] == 1.0, json.dumps(
        [{"question": s["doc"]["question"], "scores": s["filtered_resps"], "target": s["target"]} for s in samples],
        indent=1)

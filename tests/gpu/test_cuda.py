"""On a CUDA machine: the packaged model on CUDA bf16, TP=2 over NCCL token-identical to TP=1, the
engine benchmark. Written for a real GPU box (`make gpu-check`); skipped elsewhere, naming why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams

PROMPTS = ["The quick brown fox", "What is the capital of France?", "Serving large language models", "0123456789"]


def test_packaged_model_on_cuda_bf16_says_paris() -> None:
    engine = LLMEngine(EngineConfig(model="packaged:smollm2-135m-instruct", device="cuda", dtype="bfloat16",
                                    kv_cache_tokens=4096))
    try:
        assert engine.worker.device.type == "cuda"
        assert engine.info.dtype == "bfloat16"
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        [out] = engine.generate([prompt], SamplingParams(max_tokens=32, temperature=0.0))
        assert "Paris" in out.outputs[0].text
    finally:
        engine.shutdown()


def _greedy(model: str, tp_size: int) -> list[list[int]]:
    # float32 (TF32 off, torch's default for matmul): TP's split all-reduce stays token-exact
    engine = LLMEngine(EngineConfig(model=model, device="cuda", dtype="float32", tp_size=tp_size, kv_cache_tokens=2048))
    try:
        assert engine.worker.device.type == "cuda"
        outs = engine.generate(PROMPTS, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
        return [o.outputs[0].token_ids for o in outs]
    finally:
        engine.shutdown()


@pytest.mark.min_cuda_devices(2)
@pytest.mark.timeout(600)
def test_tp2_over_nccl_equals_tp1_token_for_token(tiny_model_dir: Path) -> None:
    assert _greedy(str(tiny_model_dir), 2) == _greedy(str(tiny_model_dir), 1)


@pytest.mark.timeout(900)
def test_engine_benchmark_runs_on_cuda() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "load_tests.benchmarks.engine", "--device", "cuda", "--dtype", "bfloat16", "--quick", "--json"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["device"].startswith("cuda")
    for scenario in ("single", "uniform32", "mixed64"):
        assert result[scenario]["engine"] > 0, result
    print(json.dumps(result, indent=2))  # the figures, for the report (-s)


def test_seeded_sampling_beam_search_and_prompt_logprobs_on_cuda(tiny_model_dir: Path) -> None:
    """The per-request generator, beam scores and prompt-logprob targets live on the GPU: each of
    these took a request (or the replica) down before."""
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cuda", dtype="float32", kv_cache_tokens=1024))
    try:
        seeded = SamplingParams(max_tokens=8, temperature=0.9, seed=11, ignore_eos=True)
        first, again = (engine.generate(["The quick brown fox"], seeded)[0] for _ in range(2))
        assert first.outputs[0].token_ids == again.outputs[0].token_ids and len(first.outputs[0].token_ids) == 8
        [beams] = engine.generate(["Serving"], SamplingParams(max_tokens=6, n=2, use_beam_search=True, temperature=0.0))
        assert len(beams.outputs) == 2
        [echo] = engine.generate(["one two three four"], SamplingParams(max_tokens=0, prompt_logprobs=2))
        assert echo.prompt_logprobs is not None and echo.prompt_logprobs[0] is None
        assert all(lp is not None and lp.logprob <= 0 for lp in echo.prompt_logprobs[1:])
    finally:
        engine.shutdown()

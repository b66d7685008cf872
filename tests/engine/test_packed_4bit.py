"""A model whose weights are exactly 4-bit (as the packaged GGUF's layers are) is served from the
packed copy on decode steps, and generates exactly what the fp32 path does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.config import EngineConfig
from inference.kernels import small_linear_op
from inference.llm_engine import LLMEngine
from inference.sampling_params import SamplingParams
from tests.tiny_models import make_tiny_model_dir


def snap_to_4bit(weight: torch.Tensor) -> torch.Tensor:
    """Q4_1 round trip: per group of 32 along K, d = (max - min) / 15 in fp16, w = d * q + min."""
    n, k = weight.shape
    groups = weight.reshape(n, k // 32, 32)
    mins = groups.amin(-1, keepdim=True).half().float()
    d = ((groups.amax(-1, keepdim=True) - mins) / 15).half().float()
    q = ((groups - mins) / d).round().clamp(0, 15)
    return (d * q + mins).reshape(n, k)


@pytest.fixture(scope="module")
def q4_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM

    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-q4"), seed=3)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (*[getattr(layer.self_attn, f"{p}_proj") for p in "qkvo"],
                           layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                linear.weight.copy_(snap_to_4bit(linear.weight))
    model.save_pretrained(path)
    return path


def run(model_dir: Path, compile: bool = False) -> tuple[LLMEngine, list[list[int]], list[float]]:
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_tokens=1024, block_size=8,
                                    max_num_seqs=8, compile=compile))
    prompts = ["The quick brown fox", "Serving", "0123456789", "What is the capital of France?"]
    outs = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0, logprobs=0, ignore_eos=True))
    tokens = [o.outputs[0].token_ids for o in outs]
    logprobs = [lp.logprob for o in outs for lp in o.outputs[0].logprobs or []]
    return engine, tokens, logprobs


def test_packed_decode_equals_fp32_decode(q4_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if small_linear_op() is None:
        pytest.skip("the C++ kernels are unavailable here")
    packed, tokens, logprobs = run(q4_model_dir)
    runner = packed.worker.runner
    assert runner is not None
    assert all(layer.qkv.q4_packed is not None and layer.gate_up.q4_packed is not None and
               layer.o_proj.q4_packed is not None and layer.down.q4_packed is not None for layer in runner.layers)
    packed_bytes = runner.decode_weight_bytes()
    packed.shutdown()

    monkeypatch.setenv("SLOSERVE_PACK_4BIT", "0")
    plain, plain_tokens, plain_logprobs = run(q4_model_dir)
    assert plain.worker.runner is not None and plain.worker.runner.layers[0].qkv.q4_packed is None
    plain_bytes = plain.worker.runner.decode_weight_bytes()
    plain.shutdown()

    assert tokens == plain_tokens
    assert logprobs == plain_logprobs  # the same fp32 values through the same kernel: bit for bit
    assert packed_bytes < plain_bytes  # the layers' share read as 0.75 instead of 4 bytes per weight

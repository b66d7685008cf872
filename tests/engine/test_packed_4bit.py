"""A model whose weights are exactly 4-bit (as the packaged GGUF's layers are) and whose LM head is
exactly 8-bit (as its Q8_0 embedding, tied to the head, is) is served from the packed copies on
decode steps, and generates exactly what the fp32 path does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.engine.llm_engine import LLMEngine
from inference.model.kernels import small_linear_op
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams
from load_tests.benchmarks.engine import decode_weight_bytes
from tests.tiny_models import make_tiny_model_dir


def snap_to_4bit(weight: torch.Tensor) -> torch.Tensor:
    """Q4_1 round trip: per group of 32 along K, d = (max - min) / 15 in fp16, w = d * q + min."""
    n, k = weight.shape
    groups = weight.reshape(n, k // 32, 32)
    mins = groups.amin(-1, keepdim=True).half().float()
    d = ((groups.amax(-1, keepdim=True) - mins) / 15).half().float()
    q = ((groups - mins) / d).round().clamp(0, 15)
    return (d * q + mins).reshape(n, k)


def snap_to_8bit(weight: torch.Tensor) -> torch.Tensor:
    """Q8_0 round trip: per group of 32 along K, d = max |w| / 127 in fp16, w = d * q."""
    n, k = weight.shape
    groups = weight.reshape(n, k // 32, 32)
    d = (groups.abs().amax(-1, keepdim=True) / 127).half().float()
    return ((groups / d).round().clamp(-127, 127) * d).reshape(n, k)


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
        model.lm_head.weight.copy_(snap_to_8bit(model.lm_head.weight))
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
    assert all(layer.qkv.packed is not None and layer.gate_up.packed is not None and
               layer.o_proj.packed is not None and layer.down.packed is not None for layer in runner.layers)
    head = runner.lm_head
    assert head.packed is not None and head.packed.dtype == torch.int8 and head.pack_mins is None  # type: ignore[union-attr]
    packed_bytes = decode_weight_bytes(runner)
    packed.shutdown()

    monkeypatch.setenv("SLOSERVE_PACK_4BIT", "0")
    plain, plain_tokens, plain_logprobs = run(q4_model_dir)
    assert plain.worker.runner is not None and plain.worker.runner.layers[0].qkv.packed is None
    assert plain.worker.runner.lm_head.packed is None  # type: ignore[union-attr]
    plain_bytes = decode_weight_bytes(plain.worker.runner)
    plain.shutdown()

    assert tokens == plain_tokens
    assert logprobs == plain_logprobs  # the same fp32 values through the same kernel: bit for bit
    assert packed_bytes < plain_bytes  # the layers' share read as 0.75 instead of 4 bytes per weight


def test_bf16_model_decodes_from_the_exact_4bit_values(q4_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 model from an fp32 checkpoint is packed before the cast: its few-row decode linears
    compute with the exact fp32 values (the bf16 copy serves prompts), at a fraction of the bytes."""
    if small_linear_op() is None:
        pytest.skip("the C++ kernels are unavailable here")
    from transformers import AutoModelForCausalLM

    def engine() -> LLMEngine:
        return LLMEngine(EngineConfig(model=str(q4_model_dir), dtype="bfloat16", kv_cache_tokens=1024, block_size=8,
                                      max_num_seqs=8))

    packed = engine()
    runner = packed.worker.runner
    assert runner is not None and runner.dtype == torch.bfloat16
    layer = runner.layers[0]
    assert layer.qkv.weight.dtype == torch.bfloat16 and layer.qkv.packed is not None
    assert all(m.packed is not None for lyr in runner.layers for m in (lyr.qkv, lyr.o_proj, lyr.gate_up, lyr.down))
    source = AutoModelForCausalLM.from_pretrained(q4_model_dir, dtype=torch.float32).model.layers[0].self_attn
    exact = torch.cat([source.q_proj.weight, source.k_proj.weight, source.v_proj.weight]).detach()
    x = torch.randn(2, exact.shape[1]).bfloat16()
    small = small_linear_op()
    assert small is not None
    assert torch.equal(layer.qkv(x), small(x.float(), exact, None).bfloat16())  # not the bf16-rounded weights
    assert not torch.equal(exact.bfloat16().float(), exact)  # (which do differ)
    head_exact = AutoModelForCausalLM.from_pretrained(q4_model_dir, dtype=torch.float32).lm_head.weight.detach()
    h = torch.randn(3, head_exact.shape[1])
    assert runner.lm_head.packed is not None  # type: ignore[union-attr]
    logits = runner.lm_head(h)
    assert logits.dtype == torch.float32  # never rounded to bf16
    assert torch.equal(logits, small(h, head_exact, None))  # the exact 8-bit values
    outs = packed.generate(["The quick brown fox", "Serving"], SamplingParams(max_tokens=8, temperature=0.0,
                                                                           ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in outs] == [8, 8]
    packed_bytes = decode_weight_bytes(runner)
    packed.shutdown()

    monkeypatch.setenv("SLOSERVE_PACK_4BIT", "0")
    plain = engine()
    assert plain.worker.runner is not None and plain.worker.runner.layers[0].qkv.packed is None
    plain_bytes = decode_weight_bytes(plain.worker.runner)
    plain.shutdown()
    assert packed_bytes < plain_bytes


def test_a_load_time_quantized_bf16_model_is_not_packed(q4_model_dir: Path) -> None:
    """int8 replaces the linears after the cast: no fp32 load, no packing left on the old modules."""
    if small_linear_op() is None:
        pytest.skip("the C++ kernels are unavailable here")
    from inference.model.decoder_layer import PACK_ATTR

    engine = LLMEngine(EngineConfig(model=str(q4_model_dir), dtype="bfloat16", quantization="torch-int8",
                                    kv_cache_tokens=1024, block_size=8, max_num_seqs=8))
    runner = engine.worker.runner
    assert runner is not None and runner.dtype == torch.bfloat16
    modules = [m for layer in runner.layers for m in layer.modules()]
    assert not any(hasattr(m, PACK_ATTR) or getattr(m, "packed", None) is not None for m in modules)
    out = engine.generate(["Serving"], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    engine.shutdown()

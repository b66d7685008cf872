"""int8 compute (W8A8): int8 weights per channel, int8 activations per token after SmoothQuant
smoothing, the product in int32 through `torch._int_mm`; made at load time, calibrated on the
shipped prompts, checked against the float model, cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference.compression import smoothquant
from inference.config import EngineConfig
from inference.errors import QualityCheckError
from inference.llm_engine import LLMEngine
from inference.sampling_params import SamplingParams
from inference.w8a8_linear import W8A8Linear, quantize_per_token, reference_linear, smoothing


def _linear(k: int, n: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(k, n, bias=True)
    return linear.requires_grad_(False)


def test_the_int8_product_equals_its_fake_quantized_reference() -> None:
    """`_int_mm`'s int32 accumulation is exact: the module equals the same quantization in float ops."""
    linear = _linear(96, 40)
    module = W8A8Linear.from_linear(linear, smoothing(torch.rand(96) + 0.1, [linear.weight], 0.5))
    x = torch.randn(7, 96)
    torch.testing.assert_close(module(x), reference_linear(x, module), rtol=1e-5, atol=1e-5)
    q, scale = quantize_per_token(x)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and scale.shape == (7, 1)


def test_per_token_scales_with_smoothing_keep_an_outlier_channel_from_ruining_the_rest() -> None:
    """Activations of LLMs carry a few channels 10-100x the others: per-token scales alone spend the
    int8 range on them; smoothing moves them into the weights, whose per-channel scales absorb it."""
    linear = _linear(128, 64, seed=1)
    x = torch.randn(32, 128)
    x[:, 5] *= 60.0  # an outlier channel
    exact = F.linear(x, linear.weight, linear.bias)
    plain = W8A8Linear.from_linear(linear, None)
    smoothed = W8A8Linear.from_linear(linear, smoothing(x.abs().amax(dim=0), [linear.weight], 0.5))

    def error(m: W8A8Linear) -> float:
        return float((m(x) - exact).norm() / exact.norm())

    assert error(smoothed) < 0.5 * error(plain)
    assert error(smoothed) < 0.02


def test_linears_sharing_an_input_fuse_into_one_gemm() -> None:
    parts = [_linear(64, n, seed=n) for n in (32, 16, 16)]
    s = smoothing(torch.rand(64) + 0.5, [p.weight for p in parts], 0.5)
    modules = [W8A8Linear.from_linear(p, s) for p in parts]
    fused = W8A8Linear.concat(modules)
    x = torch.randn(5, 64)
    torch.testing.assert_close(fused(x), torch.cat([m(x) for m in modules], dim=-1))
    with pytest.raises(ValueError, match="same input smoothing"):
        W8A8Linear.concat([modules[0], W8A8Linear.from_linear(parts[1], None)])


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLOSERVE_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_the_engine_serves_int8_compute_calibrated_once_and_close_to_the_float_model(
        tiny_model_dir: Path, fresh_cache: Path) -> None:
    def engine(quantization: str) -> LLMEngine:
        return LLMEngine(EngineConfig(model=str(tiny_model_dir), quantization=quantization,  # type: ignore[arg-type]
                                      kv_cache_tokens=512, block_size=8))

    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=1)
    prompts = ["Hello there", "The quick brown fox", "Serving"]
    full = engine("none")
    reference = full.generate(prompts, params)
    full.shutdown()
    first = engine("int8-compute")
    runner = first.worker.runner
    assert runner is not None
    assert all(type(m) is W8A8Linear for layer in runner.layers for m in (layer.qkv, layer.o_proj, layer.gate_up, layer.down))
    outs = first.generate(prompts, params)
    first.shutdown()
    [cached] = list((fresh_cache / "w8a8").glob("*.pt"))
    record = torch.load(cached, weights_only=True)
    assert record["agreement"] >= smoothquant.MIN_AGREEMENT and record["num_prompts"] == smoothquant.NUM_CALIB_PROMPTS
    same = sum(a == b for o, r in zip(outs, reference, strict=True)
               for a, b in zip(o.outputs[0].token_ids, r.outputs[0].token_ids, strict=True))
    assert same >= 0.75 * 12 * len(prompts)  # greedy tokens mostly the float model's
    # a second start reads the calibration (and its check) from the cache: same outputs
    second = engine("int8-compute")
    again = second.generate(prompts, params)
    second.shutdown()
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs]


def test_a_variant_below_its_quality_floor_refuses_to_start(tiny_model_dir: Path, fresh_cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smoothquant, "MIN_AGREEMENT", 1.01)  # a floor no quantized model reaches
    with pytest.raises(QualityCheckError, match="int8-compute failed its quality check: next-token agreement"):
        LLMEngine(EngineConfig(model=str(tiny_model_dir), quantization="int8-compute", kv_cache_tokens=512, block_size=8))


def test_calibration_data_missing_is_a_clear_error(tiny_model_dir: Path, fresh_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.compression import data

    monkeypatch.setattr(data, "load_prompts", lambda split: [])
    with pytest.raises(QualityCheckError, match="calibration data missing"):
        LLMEngine(EngineConfig(model=str(tiny_model_dir), quantization="int8-compute", kv_cache_tokens=512, block_size=8))

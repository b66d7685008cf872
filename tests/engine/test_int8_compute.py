"""int8 compute (W8A8): int8 weights per channel, int8 activations per token after SmoothQuant
smoothing, the product in int32 through `torch._int_mm`; made at load time, calibrated on the
shipped prompts, checked against the float model, cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference.engine.llm_engine import LLMEngine
from inference.model.quant import smoothquant
from inference.model.quant.w8a8_linear import W8A8Linear, quantize_per_token, reference_linear, smoothing
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import QualityCheckError
from inference.schema.sampling import SamplingParams


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
    # 7-bit weights without VNNI: oneDNN's vpmaddubsw pairs would saturate
    assert int(module.qweight.abs().max()) in (63, 127)


def test_the_largest_codes_do_not_saturate_the_int8_gemm() -> None:
    """Every activation and weight at its largest code (|x| 127 -> u8 255 or 1, weights at their most):
    without VNNI, oneDNN's int16 pair sums would saturate at 8-bit weights; 7-bit ones keep it exact."""
    for sign in (1.0, -1.0):
        weight = torch.full((8, 64), 0.5)
        weight[1::2] *= -1
        module = W8A8Linear(weight, None, None)
        x = torch.full((6, 64), sign)  # more rows than SMALL_ROWS: the int8 GEMM path
        torch.testing.assert_close(module(x), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_the_one_pass_activation_quantization_matches_torchs() -> None:
    """The C++ per-token quantization (smoothing, scale, round, zero point) against the same in torch ops:
    equal scales, codes within one step (multiplying by 1/scale may round a half the other way)."""
    from inference.model.kernels import quantize_rows_op

    op = quantize_rows_op()
    if op is None:
        pytest.skip("the C++ kernels are unavailable here")
    x = torch.randn(9, 96) * torch.linspace(0.1, 20.0, 96)
    inv_smooth = torch.rand(96) + 0.2
    for qmax, zero_point in ((127.0, 128), (63.0, 64)):
        codes, scale = op(x, inv_smooth, qmax, zero_point)
        smoothed = x * inv_smooth
        want_scale = smoothed.abs().amax(dim=-1, keepdim=True) / qmax
        torch.testing.assert_close(scale, want_scale)
        want = torch.round(smoothed / want_scale) + zero_point
        assert codes.dtype == torch.uint8 and int((codes.float() - want).abs().max()) <= 1
        assert int(codes.min()) >= zero_point - qmax and int(codes.max()) <= zero_point + qmax


def test_few_rows_read_the_int8_weights_with_fp32_activations() -> None:
    """A decode step of up to SMALL_ROWS rows skips the activation quantization: exactly the int8
    weights (smoothing undone) against the fp32 rows."""
    from inference.model.quant.w8a8_linear import SMALL_ROWS

    linear = _linear(96, 40, seed=3)
    module = W8A8Linear.from_linear(linear, smoothing(torch.rand(96) + 0.1, [linear.weight], 0.5))
    if module.small is None:
        pytest.skip("the C++ kernels are unavailable here")
    x = torch.randn(SMALL_ROWS, 96)
    torch.testing.assert_close(module(x), F.linear(x, module.dequantized_weight(), module.bias), rtol=1e-4, atol=1e-4)


def test_few_rows_of_an_exactly_4bit_model_compute_with_its_exact_values() -> None:
    """A GGUF model's weights are exactly 4-bit: its few-row steps read those values packed (the full
    model's own batch-1 decode), the GEMM path past SMALL_ROWS is int8; fused parts keep the packing."""
    from tests.engine.test_packed_4bit import snap_to_4bit

    parts = [_linear(64, n, seed=n) for n in (32, 32)]
    for p in parts:
        p.weight.copy_(snap_to_4bit(p.weight))
    s = smoothing(torch.rand(64) + 0.5, [p.weight for p in parts], 0.5)
    fused = W8A8Linear.concat([W8A8Linear.from_linear(p, s) for p in parts])
    if fused.exact is None:
        pytest.skip("the C++ kernels are unavailable here")
    x = torch.randn(2, 64)
    exact = torch.cat([F.linear(x, p.weight, p.bias) for p in parts], dim=-1)
    torch.testing.assert_close(fused(x), exact, rtol=1e-5, atol=1e-5)
    many = torch.randn(16, 64)
    torch.testing.assert_close(fused(many), reference_linear(many, fused), rtol=1e-5, atol=1e-5)


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
    from inference import data

    monkeypatch.setattr(data, "load_prompts", lambda split: [])
    with pytest.raises(QualityCheckError, match="calibration data missing"):
        LLMEngine(EngineConfig(model=str(tiny_model_dir), quantization="int8-compute", kv_cache_tokens=512, block_size=8))


def test_the_fp8_product_equals_its_fake_quantized_reference_and_stays_near_the_float_linear() -> None:
    """fp8-compute: float8 e4m3 codes through `torch._scaled_mm` (torch's reference loop on CPU); the
    output is bf16-rounded, as cuBLASLt writes it with row-wise scales."""
    linear = _linear(96, 48)
    module = W8A8Linear.from_linear(linear, smoothing(torch.rand(96) + 0.1, [linear.weight], 0.5), "fp8")
    assert module.qweight.dtype == torch.float8_e4m3fn and module.backend == "_scaled_mm"
    x = torch.randn(7, 96)
    y = module(x)
    torch.testing.assert_close(y, reference_linear(x, module), rtol=1e-2, atol=1e-2)
    assert (y - linear(x)).abs().max() < 0.05 * linear(x).abs().max()
    fused = W8A8Linear.concat([W8A8Linear.from_linear(linear, None, "fp8")] * 2)
    assert fused.fmt == "fp8" and fused(x).shape == (7, 96)
    with pytest.raises(ValueError, match="unknown W8A8 format 'int4'"):
        W8A8Linear.from_linear(linear, None, "int4")


def test_fp8_compute_serves_on_cpu_with_its_own_calibration_record(tiny_model_dir: Path, fresh_cache: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # the random tiny model's near-ties cost e4m3's 3-bit mantissa more than real weights do: it agrees
    # 0.81 with its float self (the packaged SmolLM2: 0.908, above the 0.85 floor; docs/int8-compute.md)
    monkeypatch.setattr(smoothquant, "MIN_AGREEMENT", 0.7)
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), quantization="fp8-compute", kv_cache_tokens=512,
                                    block_size=8))
    try:
        runner = engine.worker.runner
        assert runner is not None and all(layer.qkv.fmt == "fp8" for layer in runner.layers)  # type: ignore[union-attr]
        [out] = engine.generate(["The quick brown fox"], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
        assert len(out.outputs[0].token_ids) == 6
    finally:
        engine.shutdown()
    [record] = list((fresh_cache / "w8a8").glob("*.pt"))
    assert torch.load(record, weights_only=True)["agreement"] >= 0.7

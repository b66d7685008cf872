"""Load-time quantization: turn an already loaded float model into a quantized one, in place.

`apply_load_time_quantization(model, method)` is what the engine calls for `EngineConfig.quantization`
(and for a variant directory whose `sloserve_variant.json` names a `load_time_quantization`):
  torch-int8  every decoder nn.Linear -> `Int8Linear` (weight-only int8, per output channel; float
              activations); CPU kernel for decode rows, dense matmul otherwise. The LM head stays
              float: the int8 kernel computes in bf16 and would round the logits, which are fp32
              (`model_runner.fp32_lm_head`; an exactly-8-bit head is read packed anyway);
  int8-compute every decoder nn.Linear -> `W8A8Linear` (int8 weights per channel, int8 activations
              per token after SmoothQuant smoothing, int32 products through `torch._int_mm`),
              calibrated on the shipped prompts and checked against the float model at load
              (`smoothquant.py`); the LM head stays float;
  fp8-compute the same in float8 e4m3 through `torch._scaled_mm` (FP8 tensor cores, CUDA 8.9+; on
              CPU torch's reference loop), with the same calibration and quality check;
  bnb-int8    every decoder nn.Linear -> bitsandbytes `Linear8bitLt` (LLM.int8, threshold 6.0);
  bnb-nf4     every decoder nn.Linear -> bitsandbytes `Linear4bit` (nf4, blocks of 64, compute in
              the model's float dtype).
The LM head stays in float for the bitsandbytes methods, as transformers does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.model.quant.int8_linear import quantize_linears_int8
from inference.schema.errors import UnsupportedModelError
from inference.schema.variant_recipe import VariantRecipe

log = logging.getLogger(__name__)

LOAD_TIME_METHODS = ("torch-int8", "int8-compute", "fp8-compute", "bnb-int8", "bnb-nf4")


def apply_load_time_quantization(model: nn.Module, method: str, tokenizer: Any = None,
                                 model_dir: Path | None = None) -> nn.Module:
    """Quantize `model`'s linear layers in place with `method`; returns the model. int8-compute
    calibrates on the shipped prompts with `tokenizer` (cached by `model_dir`'s content) and raises
    `QualityCheckError` when it fails its quality check."""
    if method == "none":
        return model
    if method == "int8-compute":
        from inference.model.quant.smoothquant import quantize_int8_compute

        quantize_int8_compute(model, tokenizer, model_dir)
        return model
    if method == "fp8-compute":
        from inference.model.quant.smoothquant import quantize_int8_compute

        _check_fp8_device(next(model.parameters()).device)
        quantize_int8_compute(model, tokenizer, model_dir, fmt="fp8")
        return model
    if method == "torch-int8":
        return quantize_linears_int8(model, include_lm_head=False)
    if method in ("bnb-int8", "bnb-nf4"):
        return _bnb_replace(model, four_bit=method == "bnb-nf4")
    raise ValueError(f"unknown load-time quantization {method!r}; known: {list(LOAD_TIME_METHODS)}")


def _check_fp8_device(device: torch.device) -> None:
    """FP8 GEMMs need FP8 tensor cores (compute capability 8.9+); on CPU torch runs a reference loop
    (slow: for measuring quality), and says so in the log."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            name = torch.cuda.get_device_name(device)
            raise UnsupportedModelError(
                f"quantization 'fp8-compute' needs FP8 tensor cores (CUDA compute capability 8.9+: Ada, Hopper); "
                f"{name} is {capability[0]}.{capability[1]}: use 'int8-compute'")
    else:
        log.warning("fp8-compute on %s: torch's FP8 GEMM here is a reference loop (slow; right for quality checks)",
                    device)


def recipe_quantization(model_dir: Path | str) -> str:
    """The load-time quantization a variant directory asks for ('none' if it asks for none)."""
    if not Path(model_dir).is_dir():
        return "none"
    recipe = VariantRecipe.load(model_dir)
    return "none" if recipe is None else recipe.load_time_quantization


def _bnb_replace(model: nn.Module, four_bit: bool) -> nn.Module:
    import bitsandbytes as bnb

    targets: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if type(child) is nn.Linear and child_name != "lm_head":
                targets.append((parent, child_name, child))
    for parent, child_name, child in targets:
        device = child.weight.device
        has_bias = child.bias is not None
        new: nn.Module
        if four_bit:
            new = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=has_bias,
                compute_dtype=child.weight.dtype, quant_type="nf4", device="meta",
            )
            new.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        else:
            new = bnb.nn.Linear8bitLt(
                child.in_features, child.out_features, bias=has_bias,
                has_fp16_weights=False, threshold=6.0, device="meta",
            )
            new.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        if has_bias:
            assert child.bias is not None
            new.bias = nn.Parameter(child.bias.data.cpu(), requires_grad=False)
        setattr(parent, child_name, new.to(device))  # moving a bnb param quantizes it
    return model


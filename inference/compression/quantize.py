"""Quantization methods: bitsandbytes LLM.int8 / nf4 (saved quantized) and torch int8 (a recipe).

bitsandbytes variants are written by `from_pretrained(..., quantization_config=...)` and saved at
once, so the directory holds int8 / packed 4-bit weights and a `quantization_config` that
transformers reloads. They are saved before any forward pass: on CPUs with AVX512-BF16,
bitsandbytes 0.50 repacks 4-bit weights at the first forward and does not fully undo it on save
(absmax stays transposed), which would corrupt the saved variant.

torch int8 (`Int8Linear`, weight-only int8) has no standard on-disk format, so its directory
holds the bf16 weights and a recipe with `load_time_quantization: torch-int8` that the loader
applies (see `inference.compression.apply_load_time_quantization`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from inference.compression.base import (
    CompressedVariant,
    CompressionContext,
    Compressor,
    Option,
    VariantRecipe,
    load_base_model,
    save_variant,
)


class BnbCompressor(Compressor):
    """bitsandbytes LLM.int8 (`bnb-int8`) or nf4 4-bit (`bnb-nf4`, bf16 compute)."""

    def __init__(self, four_bit: bool) -> None:
        self.four_bit = four_bit
        self.method = "bnb-nf4" if four_bit else "bnb-int8"

    def options(self) -> dict[str, Option]:
        if self.four_bit:
            return {"quant_type": "nf4", "blocksize": 64, "compute_dtype": "bfloat16"}
        return {"threshold": 6.0}

    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        if self.four_bit:
            config = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
        else:
            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(
                ctx.base_dir, quantization_config=config, dtype=torch.bfloat16
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)  # before any forward: see the module docstring
        AutoTokenizer.from_pretrained(ctx.base_dir).save_pretrained(out_dir)
        recipe = VariantRecipe(self.method, self.options())
        recipe.save(out_dir)
        return CompressedVariant(self.method, out_dir, recipe)


class TorchInt8Compressor(Compressor):
    """torch int8 (`torch-int8`): bf16 weights on disk, weight-only int8 quantization at load time."""

    method = "torch-int8"

    def options(self) -> dict[str, Option]:
        return {"weights": "int8 per-channel", "activations": "float (weight-only)", "lm_head": False}

    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        model = load_base_model(ctx.base_dir)
        recipe = VariantRecipe(self.method, self.options(), load_time_quantization="torch-int8")
        save_variant(model, ctx.base_dir, out_dir, recipe, torch.bfloat16)
        return CompressedVariant(self.method, out_dir, recipe)


class Int8ComputeCompressor(Compressor):
    """int8 compute (`int8-compute`, W8A8): bf16 weights on disk, SmoothQuant int8 weights and per-token
    int8 activations at load time, calibrated on the shipped prompts (`smoothquant.py`)."""

    method = "int8-compute"

    def options(self) -> dict[str, Option]:
        from inference.model.quant.smoothquant import ALPHA, INCLUDE_LM_HEAD

        return {"weights": "int8 per-channel", "activations": "int8 per-token, SmoothQuant", "alpha": ALPHA,
                "lm_head": INCLUDE_LM_HEAD}

    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        model = load_base_model(ctx.base_dir)
        recipe = VariantRecipe(self.method, self.options(), load_time_quantization="int8-compute")
        save_variant(model, ctx.base_dir, out_dir, recipe, torch.float32)
        return CompressedVariant(self.method, out_dir, recipe)

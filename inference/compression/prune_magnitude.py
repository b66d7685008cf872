"""Unstructured magnitude pruning: zero the smallest-|w| weights of every decoder linear layer.

Each projection (q/k/v/o, gate/up/down) keeps its largest `1 - sparsity` fraction of weights by
absolute value; embeddings, norms and the LM head are untouched. The result is saved dense (same
shapes, same speed with dense kernels): it is a quality reference for sparsity and the input of a
sparse runtime, not a speed variant on its own, which the measurements show.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from inference.compression.base import (
    CompressedVariant,
    CompressionContext,
    Compressor,
    Option,
    VariantRecipe,
    load_base_model,
    save_variant,
)


def magnitude_prune_(model: nn.Module, sparsity: float) -> float:
    """Zero the smallest weights of each decoder nn.Linear in place; returns the achieved sparsity."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    zeros, total = 0, 0
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or name.endswith("lm_head"):
            continue
        weight = module.weight.data
        num_prune = int(weight.numel() * sparsity)
        if num_prune > 0:
            threshold = weight.abs().flatten().float().kthvalue(num_prune).values
            weight.masked_fill_(weight.abs() <= threshold, 0.0)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / max(1, total)


class MagnitudePruneCompressor(Compressor):
    """`prune-magnitude`: unstructured, per-layer magnitude pruning to `sparsity`."""

    method = "prune-magnitude"

    def __init__(self, sparsity: float = 0.5) -> None:
        self.sparsity = sparsity
        self.achieved = 0.0

    def options(self) -> dict[str, Option]:
        return {"sparsity": self.sparsity, "achieved_sparsity": round(self.achieved, 4)}

    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        model = load_base_model(ctx.base_dir)
        with torch.no_grad():
            self.achieved = magnitude_prune_(model, self.sparsity)
        recipe = VariantRecipe(self.method, self.options())
        save_variant(model, ctx.base_dir, out_dir, recipe, torch.bfloat16)
        return CompressedVariant(self.method, out_dir, recipe)

"""Structured pruning: remove whole decoder layers and FFN channels, scored on the shipped prompts.

Scores come from one calibration pass of the full model over the training prompts:
  layer  block influence (ShortGPT): 1 - mean cos(hidden in, hidden out); layers that barely
         change the residual stream go first (never the first or the last layer);
  FFN    per channel c: ||act_c||_2 * ||W_down[:, c]||_2 (Wanda-style), act = silu(gate) * up,
         the same number of channels kept in every layer so the config stays uniform.
The result is a smaller dense Llama (fewer layers, smaller `intermediate_size`), optionally
healed by a short logit distillation from the full model on its own generations (`kd.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from inference.compression.base import (
    CompressedVariant,
    CompressionContext,
    Compressor,
    Option,
    VariantRecipe,
    compute_dtype,
    load_base_model,
    save_variant,
)
from inference.compression.kd import KDBudget, teacher_sequences, train_student
from inference.compression.surgery import keep_layers_, prune_ffn_


@torch.inference_mode()
def calibration_scores(model: Any, prompts: list[list[int]]) -> tuple[list[float], list[torch.Tensor]]:
    """(block influence per layer, FFN channel importance per layer) over `prompts`."""
    layers = model.model.layers
    influence = [0.0] * len(layers)
    act_sq = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    num_tokens = 0
    hooks = []
    for i, layer in enumerate(layers):
        def on_layer(module: Any, args: Any, kwargs: Any, output: Any, i: int = i) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(h_in.float().flatten(0, 1), h_out.float().flatten(0, 1), dim=-1)
            influence[i] += float((1 - cos).sum())

        def on_down(module: Any, args: Any, i: int = i) -> None:
            act_sq[i] += args[0].float().pow(2).flatten(0, 1).sum(0)

        hooks.append(layer.register_forward_hook(on_layer, with_kwargs=True))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(on_down))
    try:
        for prompt in prompts:
            model(input_ids=torch.tensor([prompt]))
            num_tokens += len(prompt)
    finally:
        for hook in hooks:
            hook.remove()
    channel = [a.sqrt() * layer.mlp.down_proj.weight.float().norm(dim=0) for a, layer in zip(act_sq, layers, strict=True)]
    return [x / max(1, num_tokens) for x in influence], channel


def choose_layers(influence: list[float], num_drop: int) -> list[int]:
    """Indices of the layers to keep: drop the `num_drop` least influential inner layers."""
    inner = sorted(range(1, len(influence) - 1), key=lambda i: influence[i])
    dropped = set(inner[:num_drop])
    return [i for i in range(len(influence)) if i not in dropped]


class StructuredPruneCompressor(Compressor):
    """`prune-structured`: drop `drop_layers` layers, keep `ffn_keep` of FFN channels, heal with KD."""

    method = "prune-structured"

    def __init__(self, drop_layers: int = 8, ffn_keep: float = 0.75, heal: KDBudget | None = None, num_calib: int = 64) -> None:
        self.drop_layers, self.ffn_keep, self.heal, self.num_calib = drop_layers, ffn_keep, heal, num_calib
        self.heal_steps = 0

    def options(self) -> dict[str, Option]:
        return {"drop_layers": self.drop_layers, "ffn_keep": self.ffn_keep, "heal_steps": self.heal_steps}

    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        model = load_base_model(ctx.base_dir)
        num_layers = len(model.model.layers)
        drop = min(self.drop_layers, max(0, num_layers - 2))
        influence, channel = calibration_scores(model, ctx.calib_prompts[: self.num_calib])
        keep = choose_layers(influence, drop)
        width = int(model.config.intermediate_size * self.ffn_keep)
        width = max(8, width - width % 8) if width >= 16 else max(1, width)  # SIMD-friendly widths
        student = model  # the scores are taken; edit the same weights
        keep_layers_(student, keep)
        prune_ffn_(student, [channel[i].topk(width).indices for i in keep])
        if self.heal is not None and self.heal.max_steps > 0:
            teacher = load_base_model(ctx.base_dir, compute_dtype())
            pad = int(getattr(model.config, "pad_token_id", None) or 0)
            cache = None if ctx.work_dir is None else ctx.work_dir / "teacher_sequences.pt"
            sequences = teacher_sequences(teacher, ctx.calib_prompts, 16 if ctx.quick else 64, pad, cache)
            ckpt_dir = None if ctx.work_dir is None else ctx.work_dir / "prune-structured"
            tag = f"prune-structured:{keep}:{width}:{len(sequences)}"
            stats = train_student(teacher, student, sequences, self.heal, ckpt_dir, tag, desc="heal", seed=ctx.seed)
            self.heal_steps = stats.steps
        recipe = VariantRecipe(self.method, {**self.options(), "layers_kept": len(keep), "intermediate_size": width})
        save_variant(student, ctx.base_dir, out_dir, recipe, torch.bfloat16)
        return CompressedVariant(self.method, out_dir, recipe)

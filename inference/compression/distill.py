"""Distillation: a student made of a subset of the teacher's layers, trained on the teacher.

The student starts as the full model with only `num_layers` evenly spaced decoder layers kept
(first and last included), so it is a standard, shallower Llama initialised from the teacher's own
weights. It is then trained by logit KD plus sequence-level KD (`kd.py`) on the teacher's greedy
answers to the shipped training prompts; no external corpus. Checkpoints and the teacher's
generations live in the context's `work_dir`, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

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
from inference.compression.kd import KDBudget, KDStats, teacher_sequences, train_student
from inference.compression.surgery import evenly_spaced_layers, keep_layers_


class DistillCompressor(Compressor):
    """`distill`: a `num_layers`-layer student (or `layer_fraction` of the teacher's) trained by KD."""

    method = "distill"

    def __init__(self, budget: KDBudget, num_layers: int | None = None, layer_fraction: float = 0.5,
                 max_new_tokens: int = 64) -> None:
        self.budget, self.num_layers, self.layer_fraction = budget, num_layers, layer_fraction
        self.max_new_tokens = max_new_tokens
        self.stats: KDStats | None = None
        self.kept: list[int] = []

    def options(self) -> dict[str, Option]:
        options: dict[str, Option] = {
            "layers_kept": len(self.kept), "max_steps": self.budget.max_steps,
            "batch_size": self.budget.batch_size, "lr": self.budget.lr, "ce_weight": self.budget.ce_weight,
        }
        if self.stats is not None:
            options.update(steps=self.stats.steps, train_seconds=round(self.stats.seconds, 1),
                           final_loss=round(self.stats.last_loss, 4))
        return options

    def make_student(self, base_dir: Path) -> torch.nn.Module:
        student = load_base_model(base_dir)
        total = len(student.model.layers)
        count = self.num_layers or max(1, round(total * self.layer_fraction))
        self.kept = evenly_spaced_layers(total, min(count, total))
        return keep_layers_(student, self.kept)

    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        teacher = load_base_model(ctx.base_dir, torch.bfloat16)
        student = self.make_student(ctx.base_dir)
        pad = int(getattr(teacher.config, "pad_token_id", None) or 0)
        cache = None if ctx.work_dir is None else ctx.work_dir / "teacher_sequences.pt"
        sequences = teacher_sequences(teacher, ctx.calib_prompts, 16 if ctx.quick else self.max_new_tokens, pad, cache)
        ckpt_dir = None if ctx.work_dir is None else ctx.work_dir / "distill"
        tag = f"distill:{self.kept}:{len(sequences)}"
        self.stats = train_student(teacher, student, sequences, self.budget, ckpt_dir, tag, seed=ctx.seed)
        recipe = VariantRecipe(self.method, self.options())
        save_variant(student, ctx.base_dir, out_dir, recipe, torch.bfloat16)
        return CompressedVariant(self.method, out_dir, recipe)

"""Distillation: a student made of a subset of the teacher's layers, trained on the teacher.

The student starts as the full model with only `num_layers` of its decoder layers kept, so it is
a standard, shallower Llama initialised from the teacher's own weights. Which layers: by default
the ones whose removal costs least, measured on the shipped calibration prompts (`importance.py`:
greedy removal by the KL the skipped layers cause); `selection="even"` keeps evenly spaced ones.
It is then trained by logit KD plus sequence-level KD (`kd.py`) on the teacher's greedy answers to
the shipped training prompts; no external corpus. Checkpoints, the chosen layers and the
teacher's generations live in the context's `work_dir`, so an interrupted run resumes where it
stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch

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
from inference.compression.importance import LayerRemoval, choose_layers
from inference.compression.kd import KDBudget, KDStats, teacher_sequences, train_student
from inference.compression.surgery import evenly_spaced_layers, keep_layers_

log = logging.getLogger(__name__)
NUM_IMPORTANCE_PROMPTS = 8  # calibration prompts the layer choice is measured on


class DistillCompressor(Compressor):
    """`distill`: a `num_layers`-layer student (or `layer_fraction` of the teacher's) trained by KD."""

    method = "distill"

    def __init__(self, budget: KDBudget, num_layers: int | None = None, layer_fraction: float = 0.5,
                 max_new_tokens: int = 64, selection: Literal["importance", "even"] = "importance") -> None:
        self.budget, self.num_layers, self.layer_fraction = budget, num_layers, layer_fraction
        self.max_new_tokens, self.selection = max_new_tokens, selection
        self.stats: KDStats | None = None
        self.kept: list[int] = []
        self.removals: list[LayerRemoval] = []

    def options(self) -> dict[str, Option]:
        options: dict[str, Option] = {
            "layers_kept": len(self.kept), "kept": ",".join(map(str, self.kept)), "selection": self.selection,
            "max_steps": self.budget.max_steps, "budget_s": self.budget.max_seconds,
            "batch_size": self.budget.batch_size, "lr": self.budget.lr, "ce_weight": self.budget.ce_weight,
        }
        if self.removals:
            options["kl_before_training"] = round(self.removals[-1].kl, 4)
        if self.stats is not None:
            options.update(steps=self.stats.steps, train_seconds=round(self.stats.seconds, 1),
                           final_loss=round(self.stats.last_loss, 4))
        return options

    def make_student(self, base_dir: Path, calib_prompts: list[list[int]] | None = None,
                     work_dir: Path | None = None) -> torch.nn.Module:
        """The teacher with only the chosen layers kept (the choice is cached in `work_dir`)."""
        student = load_base_model(base_dir)
        total = len(student.model.layers)
        count = min(self.num_layers or max(2, round(total * self.layer_fraction)), total)
        if self.selection == "even" or not calib_prompts:
            self.kept = evenly_spaced_layers(total, count)
        else:
            self.kept, self.removals = self._importance_choice(student, calib_prompts, count, work_dir)
        return keep_layers_(student, self.kept)

    def _importance_choice(self, model: torch.nn.Module, prompts: list[list[int]], count: int,
                           work_dir: Path | None) -> tuple[list[int], list[LayerRemoval]]:
        prompts = prompts[:NUM_IMPORTANCE_PROMPTS]
        cache = None if work_dir is None else work_dir / f"layers-{count}.json"
        key = {"count": count, "prompts": prompts}
        if cache is not None and cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return saved["keep"], [LayerRemoval(r["layer"], r["kl"]) for r in saved["removals"]]

        def report(step: LayerRemoval) -> None:
            log.warning("distill: layer %d removed (KL to full %.4f)", step.layer, step.kl)

        keep, removals = choose_layers(model, prompts, count, progress=report)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            removed = [{"layer": r.layer, "kl": r.kl} for r in removals]
            cache.write_text(json.dumps({"key": key, "keep": keep, "removals": removed}))
        return keep, removals

    def compress(self, ctx: CompressionContext, out_dir: Path) -> CompressedVariant:
        teacher = load_base_model(ctx.base_dir, compute_dtype())
        student = self.make_student(ctx.base_dir, ctx.calib_prompts, ctx.work_dir)
        pad = int(getattr(teacher.config, "pad_token_id", None) or 0)
        cache = None if ctx.work_dir is None else ctx.work_dir / "teacher_sequences.pt"
        sequences = teacher_sequences(teacher, ctx.calib_prompts, 16 if ctx.quick else self.max_new_tokens, pad, cache)
        ckpt_dir = None if ctx.work_dir is None else ctx.work_dir / f"distill-{len(self.kept)}"
        tag = f"distill:{self.kept}:{len(sequences)}"
        self.stats = train_student(teacher, student, sequences, self.budget, ckpt_dir, tag, seed=ctx.seed)
        recipe = VariantRecipe(self.method, self.options())
        save_variant(student, ctx.base_dir, out_dir, recipe, torch.bfloat16)
        return CompressedVariant(self.method, out_dir, recipe)

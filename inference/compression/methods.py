"""The methods `sloserve compress --methods` knows, and their settings for full and `--quick` runs.

  bnb-int8          bitsandbytes LLM.int8, saved quantized (a memory variant; slow on CPU)
  bnb-nf4           bitsandbytes nf4 4-bit, bf16 compute, saved quantized (the smallest)
  torch-int8        weight-only int8 at load time (a batch-1 latency and memory variant on CPU)
  int8-compute      W8A8 at load time: int8 weights and per-token int8 activations (SmoothQuant),
                    calibrated on the shipped prompts; saved as fp32 weights + recipe
  prune-magnitude   30% unstructured magnitude sparsity, saved dense (a quality reference;
                    50% without retraining left the 135M model answering nothing right)
  prune-structured  6 least influential layers and 25% of FFN channels removed, healed by KD
  distill-N         a student of N of the teacher's layers, the ones whose removal costs least
                    (measured KL, greedy), trained by logit + sequence KD; `distill` keeps 2/3 (20 of 30)
Budgets: distillation at most 9 minutes per variant on 2 CPU cores (`--budget-minutes` sets it),
healing at most 3; `--quick` takes a few steps each.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from inference.compression.base import Compressor
from inference.compression.distill import DistillCompressor
from inference.compression.kd import UNBOUNDED_STEPS, KDBudget
from inference.compression.prune_magnitude import MagnitudePruneCompressor
from inference.compression.prune_structured import StructuredPruneCompressor
from inference.compression.quantize import BnbCompressor, Int8ComputeCompressor, TorchInt8Compressor

QUICK_KD = KDBudget(max_steps=3, max_seconds=60.0, batch_size=2, ckpt_every=2)
DISTILL_KD = KDBudget(max_steps=400, max_seconds=540.0, batch_size=8, lr=3e-4)
HEAL_KD = KDBudget(max_steps=150, max_seconds=180.0, batch_size=8, lr=1e-4)

METHODS: dict[str, Callable[[bool], Compressor]] = {
    "bnb-int8": lambda quick: BnbCompressor(four_bit=False),
    "bnb-nf4": lambda quick: BnbCompressor(four_bit=True),
    "torch-int8": lambda quick: TorchInt8Compressor(),
    "int8-compute": lambda quick: Int8ComputeCompressor(),
    "prune-magnitude": lambda quick: MagnitudePruneCompressor(sparsity=0.3),
    "prune-structured": lambda quick: StructuredPruneCompressor(
        drop_layers=6, ffn_keep=0.75, heal=QUICK_KD if quick else HEAL_KD, num_calib=8 if quick else 64
    ),
}
_DISTILL = re.compile(r"^distill(?:-(\d{1,3}))?$")


def is_known(method: str) -> bool:
    return method in METHODS or _DISTILL.match(method) is not None


def known_methods() -> list[str]:
    return [*sorted(METHODS), "distill", "distill-N"]


def build_compressor(method: str, quick: bool = False, budget_minutes: float | None = None) -> Compressor:
    """The compressor for `method`; `budget_minutes` bounds each training run (distillation, healing)."""
    distill = _DISTILL.match(method)
    if distill is not None:
        budget = QUICK_KD if quick else DISTILL_KD
        if budget_minutes is not None:
            budget = replace(budget, max_seconds=60.0 * budget_minutes, max_steps=max(budget.max_steps, UNBOUNDED_STEPS))
        layers = distill.group(1)
        # plain `distill`: two thirds of the teacher's layers (20 of the packaged model's 30)
        return DistillCompressor(budget, num_layers=int(layers) if layers else None, layer_fraction=2 / 3)
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; known: {known_methods()}")
    compressor = METHODS[method](quick)
    if budget_minutes is not None and isinstance(compressor, StructuredPruneCompressor) and compressor.heal:
        compressor.heal = replace(compressor.heal, max_seconds=60.0 * budget_minutes)
    return compressor

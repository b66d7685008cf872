"""The methods `sloserve compress --methods` knows, and their settings for full and `--quick` runs.

  bnb-int8          bitsandbytes LLM.int8, saved quantized (a memory variant; slow on CPU)
  bnb-nf4           bitsandbytes nf4 4-bit, bf16 compute, saved quantized (the smallest)
  torch-int8        weight-only int8 at load time (a batch-1 latency and memory variant on CPU)
  prune-magnitude   30% unstructured magnitude sparsity, saved dense (a quality reference;
                    50% without retraining left the 135M model answering nothing right)
  prune-structured  6 least influential layers and 25% of FFN channels removed, healed by KD
  distill           half the teacher's layers (evenly spaced), trained by logit + sequence KD
Budgets: distillation at most 9 minutes on 2 CPU cores, healing at most 3; `--quick` takes a few steps each.
"""

from __future__ import annotations

from collections.abc import Callable

from inference.compression.base import Compressor
from inference.compression.distill import DistillCompressor
from inference.compression.kd import KDBudget
from inference.compression.prune_magnitude import MagnitudePruneCompressor
from inference.compression.prune_structured import StructuredPruneCompressor
from inference.compression.quantize import BnbCompressor, TorchInt8Compressor

QUICK_KD = KDBudget(max_steps=3, max_seconds=60.0, batch_size=2, ckpt_every=2)
DISTILL_KD = KDBudget(max_steps=400, max_seconds=540.0, batch_size=8, lr=3e-4)
HEAL_KD = KDBudget(max_steps=150, max_seconds=180.0, batch_size=8, lr=1e-4)

METHODS: dict[str, Callable[[bool], Compressor]] = {
    "bnb-int8": lambda quick: BnbCompressor(four_bit=False),
    "bnb-nf4": lambda quick: BnbCompressor(four_bit=True),
    "torch-int8": lambda quick: TorchInt8Compressor(),
    "prune-magnitude": lambda quick: MagnitudePruneCompressor(sparsity=0.3),
    "prune-structured": lambda quick: StructuredPruneCompressor(
        drop_layers=6, ffn_keep=0.75, heal=QUICK_KD if quick else HEAL_KD, num_calib=8 if quick else 64
    ),
    "distill": lambda quick: DistillCompressor(QUICK_KD if quick else DISTILL_KD, layer_fraction=0.5),
}


def build_compressor(method: str, quick: bool = False) -> Compressor:
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method](quick)

"""Compression: quantized, pruned and distilled variants of the full model, each measured.

Importing this package pulls in no torch. The variant manifest's schema is not here but in
`inference.manifest`, so the controller reads manifests without depending on this package. The
engine's load-time hook lives here:

    from inference.compression import apply_load_time_quantization, recipe_quantization
    method = cfg.quantization if cfg.quantization != "none" else recipe_quantization(model_dir)
    model = apply_load_time_quantization(model, method)   # "torch-int8" | "bnb-int8" | "bnb-nf4"

Modules: `base` (the `Compressor` interface), `methods` (the names `--methods` takes),
`quantize` (bitsandbytes int8/nf4, torch int8), `int8_linear`, `runtime` (load-time quantization),
`prune_magnitude`, `prune_structured`, `surgery` (layer/FFN removal), `distill` and `kd`
(knowledge distillation), `data` (shipped prompts, text, QA), `quality`, `speed`, `pareto`,
`pipeline` and `cli` (`sloserve compress`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def apply_load_time_quantization(model: Any, method: str) -> Any:
    """Quantize a loaded model's linear layers in place ('none', 'torch-int8', 'bnb-int8', 'bnb-nf4')."""
    from inference.compression.runtime import apply_load_time_quantization as apply

    return apply(model, method)


def recipe_quantization(model_dir: Path | str) -> str:
    """The load-time quantization a variant directory's `sloserve_variant.json` asks for, else 'none'."""
    from inference.compression.runtime import recipe_quantization as read

    return read(model_dir)


__all__ = ["apply_load_time_quantization", "recipe_quantization"]

"""Compression: quantized, pruned and distilled variants of the full model, each measured.

Importing this package pulls in no torch. The variant manifest's schema is not here but in
`inference.manifest`, so the controller reads manifests without depending on this package. The
engine's load-time hook lives here:

    from inference.compression import apply_load_time_quantization, recipe_quantization
    method = cfg.quantization if cfg.quantization != "none" else recipe_quantization(model_dir)
    model = apply_load_time_quantization(model, method, tokenizer, model_dir)  # "torch-int8" | "int8-compute" | ...

Modules: `base` (the `Compressor` interface), `methods` (the names `--methods` takes),
`quantize` (bitsandbytes int8/nf4, torch int8), `int8_linear`, `smoothquant` (int8 compute,
over `inference.w8a8_linear`), `runtime` (load-time quantization),
`prune_magnitude`, `prune_structured`, `surgery` (layer/FFN removal), `distill` and `kd`
(knowledge distillation), `data` (shipped prompts, text, QA), `quality`, `speed`, `pareto`,
`pipeline` and `cli` (`sloserve compress`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def apply_load_time_quantization(model: Any, method: str, tokenizer: Any = None, model_dir: Path | None = None) -> Any:
    """Quantize a loaded model's linear layers in place ('none', 'torch-int8', 'int8-compute',
    'bnb-int8', 'bnb-nf4'); int8-compute calibrates with `tokenizer`, cached by `model_dir`."""
    from inference.compression.runtime import apply_load_time_quantization as apply

    return apply(model, method, tokenizer, model_dir)


def recipe_quantization(model_dir: Path | str) -> str:
    """The load-time quantization a variant directory's `sloserve_variant.json` asks for, else 'none'."""
    from inference.compression.runtime import recipe_quantization as read

    return read(model_dir)


__all__ = ["apply_load_time_quantization", "recipe_quantization"]

"""Compression: making quantized, pruned and distilled variants of the full model, and measuring them.

Above the engine: the methods build variant directories, and `quality`/`speed` measure them by
running the engine. The engine never imports this package; what it applies at load time (int8
weight-only, int8 compute, bitsandbytes) lives in `inference.model.quant`, and the variant
manifest's schema in `inference.schema.manifest`.

Modules: `base` (the `Compressor` interface), `methods` (the names `--methods` takes),
`quantize` (bitsandbytes int8/nf4, torch int8, int8 compute), `prune_magnitude`,
`prune_structured`, `surgery` (layer/FFN removal), `distill` and `kd` (knowledge distillation),
`quality`, `speed`, `pareto`, `pipeline` and `cli` (`sloserve compress`).
"""

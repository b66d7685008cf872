"""Model surgery that keeps a standard Llama: drop whole decoder layers, shrink every FFN uniformly.

Both edit a Hugging Face Llama-like model in place and update its config, so `save_pretrained`
writes a plain, smaller dense model that any loader (and the engine's fused forward) accepts:
`num_hidden_layers` shrinks (and `layer_types`, and each attention's `layer_idx` for the KV cache),
or `intermediate_size` shrinks to the same width in every layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def evenly_spaced_layers(num_layers: int, num_keep: int) -> list[int]:
    """`num_keep` layer indices spread over `num_layers`, always keeping the first and the last."""
    if not 1 <= num_keep <= num_layers:
        raise ValueError(f"num_keep must be in [1, {num_layers}], got {num_keep}")
    if num_keep == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (num_keep - 1)) for i in range(num_keep)})


def keep_layers_(model: Any, keep: list[int]) -> Any:
    """Keep only the decoder layers at `keep` (sorted, unique), renumbered 0..len(keep)-1."""
    layers = model.model.layers
    if not keep or sorted(set(keep)) != list(keep) or keep[-1] >= len(layers) or keep[0] < 0:
        raise ValueError(f"keep must be sorted unique indices in [0, {len(layers)}), got {keep}")
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(model.model.layers):
        if hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_index
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    weight = linear.weight.data
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = None if linear.bias is None else (linear.bias.data if rows is None else linear.bias.data[rows])
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def prune_ffn_(model: Any, keep_channels: list[torch.Tensor]) -> Any:
    """Keep, in layer i, the FFN channels `keep_channels[i]` (all the same length)."""
    widths = {int(k.numel()) for k in keep_channels}
    if len(widths) != 1 or len(keep_channels) != len(model.model.layers):
        raise ValueError(f"need one equal-length channel list per layer, got widths {sorted(widths)}")
    for layer, keep in zip(model.model.layers, keep_channels, strict=True):
        keep = keep.sort().values
        mlp = layer.mlp
        mlp.gate_proj = _sliced_linear(mlp.gate_proj, keep, None)
        mlp.up_proj = _sliced_linear(mlp.up_proj, keep, None)
        mlp.down_proj = _sliced_linear(mlp.down_proj, None, keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(keep.numel())
    model.config.intermediate_size = widths.pop()
    return model
